"""``logfile.pdf`` pages for the External jobs, drawn with our own PDF writer (numpy + zlib, no matplotlib).

- ``pdf.py``: a minimal PDF 1.4 writer: ``Page`` (paths, circles, Helvetica text, 8-bit gray/RGB images)
  and ``write_pdf(path, pages)`` (atomic).
- ``figures.py``: the figures the jobs use: ``picks_figure``, ``histogram_figure``, ``curves_figure``,
  ``scatter_figure``, ``image_figure``, ``gallery_figure`` and ``write_pdf(path, figures)``.
"""
