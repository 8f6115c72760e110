"""Transformer particle picker (UPicker method): a DINO-style deformable DETR in plain PyTorch.

* :mod:`.backbone`: ResNet-50 (default) and lighter ResNets for CPU, multiscale features.
* :mod:`.deformable`: multiscale deformable attention by ``grid_sample`` (no custom ops).
* :mod:`.model`: encoder, decoder, mixed query selection, box and objectness heads.
* :mod:`.matcher`: Hungarian matching (``scipy.optimize.linear_sum_assignment``) and box geometry.
* :mod:`.denoising`: contrastive denoising (CDN) queries and their attention mask.
* :mod:`.losses`: the set loss (focal classification, L1 + GIoU boxes) and the CDN loss.
* :mod:`.preprocess`: normalisation, bilateral denoising, histogram equalisation / CLAHE, patches.
* :mod:`.augment`: hybrid augmentation (offline rotations / flips / crops, online flips / contrast / noise).
* :mod:`.train`: A-LoG pseudo-label pretraining and few-label fine-tuning with early stopping.
* :mod:`.predict`: picking a micrograph (patches for dense ones, merge, optional NMS).

Arrays and plain parameters only: no RELION flags, STAR labels or job directories. Pixel coordinates are
``(x, y)`` = (column, row), 0-based. A particle of diameter ``d`` is the box ``(x, y, d, d)``; boxes inside the
network are ``(cx, cy, w, h)`` normalised to ``[0, 1]`` by the image width and height.
"""
