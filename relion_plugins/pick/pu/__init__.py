"""Topaz-method positive-unlabelled (PU) CNN particle picker.

* :mod:`.models`: the region classifiers (``conv31/63/127``, ``resnet8/16``), dense score maps, model state.
* :mod:`.objectives`: PN, NNPU, GE-KL and GE-binomial losses and the class prior ``pi``.
* :mod:`.sampling`: labelled-positive / unlabelled crop minibatches from micrographs.

Micrograph normalisation lives in :mod:`relion_plugins.imaging.normalize` (no torch). Arrays and plain
parameters only: no RELION flags, STAR labels or job directories. Pixel coordinates are ``(x, y)`` =
(column, row), 0-based, in the frame of the (possibly downsampled) micrographs given. Importing this
package imports nothing heavy; import the submodules.
"""
