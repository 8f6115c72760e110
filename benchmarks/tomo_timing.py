"""Timing of the tomogram picker's full configuration: training iterations and picking one tomogram.

The full configuration is rp-tomo-train's default: U-Net width 32, depth 4, 64³ patches, minibatch 4, a
meta (bi-level) step every iteration. Per-iteration time of RobPicker (LC + DR) and of the plain U-Net
(its peer, measured in the same run) comes from two runs of the real training loop of different lengths,
so that set-up and the final validation cancel. Picking is rp-tomo-pick's network pass (64³ patches
overlapping by 20 voxels, softmax averaged) over a tomogram of ``--pick-shape`` voxels and the
clustering of its argmax; the weights are untrained (the network's time does not depend on them).

On a GPU the default tomogram is 300 x 1024 x 1024 voxels (a 4k camera's tomogram at bin 4); on a CPU
pass a smaller ``--pick-shape``: each 64³ patch takes about a second there.

Run:  python benchmarks/tomo_timing.py [--iterations 2 6] [--pick-shape 300 1024 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import device_words, machine_line, run_args, sync, update_section  # noqa: E402

from relion_plugins.pick.tomo.bilevel import TrainConfig, train_picker  # noqa: E402
from relion_plugins.pick.tomo.data import PatchSampler  # noqa: E402
from relion_plugins.pick.tomo.infer import cluster_picks, predict_volume  # noqa: E402
from relion_plugins.pick.tomo.unet import UNet3D  # noqa: E402
from relion_plugins.simulate.tomogram import TomogramConfig, noisy_sphere_labels, simulate_tomogram  # noqa: E402


def seconds_per_iteration(method: str, iterations: tuple[int, int], samplers, n_classes: int, args, device) -> float:
    """Per-iteration time of ``method``: the difference of two training runs over their difference in length."""
    times = []
    for n in iterations:
        cfg = TrainConfig(method=method, iterations=n, batch=args.batch, meta_interval=1, eval_every=n,
                          eval_patches=2, seed=1)  # fmt: skip
        sync(device)
        t0 = time.monotonic()
        train_picker(*samplers, n_classes, cfg, width=args.width, depth=4, device=device)
        sync(device)
        times.append(time.monotonic() - t0)
    return (times[1] - times[0]) / (iterations[1] - iterations[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, nargs=2, default=(2, 6),
                        help="lengths of the two training runs whose difference is timed")  # fmt: skip
    parser.add_argument("--pick-shape", type=int, nargs=3, default=None,
                        help="tomogram to pick, nz ny nx (default 300 1024 1024 on a GPU, 96 256 256 on a CPU)")  # fmt: skip
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on a CPU")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even when a GPU is present")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.iterations[1] <= args.iterations[0]:
        raise SystemExit("--iterations: the second run must be longer than the first")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    pick_shape = tuple(args.pick_shape or ((300, 1024, 1024) if device.type == "cuda" else (96, 256, 256)))

    cfg = TomogramConfig(shape=(80, 128, 128))
    train_t, val_t = simulate_tomogram(cfg, seed=11), simulate_tomogram(cfg, seed=12)
    labels, table = noisy_sphere_labels(train_t, seed=11)

    def centres(t):
        return t[["x", "y", "z", "species"]].to_numpy(dtype=float)

    samplers = (
        PatchSampler([train_t.volume], [labels], [centres(table)], args.patch, np.random.default_rng(1)),
        PatchSampler([val_t.volume], [val_t.shape_labels], [centres(val_t.particles)], args.patch,
                     np.random.default_rng(2), class_balanced=True),  # fmt: skip
    )
    n_classes = len(train_t.species) + 1
    warm = TrainConfig(method="robpicker", iterations=1, batch=args.batch, eval_every=1, eval_patches=2)
    train_picker(*samplers, n_classes, warm, width=args.width, depth=4, device=device)  # first calls set up torch
    per_it = {m: seconds_per_iteration(m, tuple(args.iterations), samplers, n_classes, args, device)
              for m in ("plain", "robpicker")}  # fmt: skip
    peak = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30

    torch.manual_seed(0)
    model = UNet3D(n_classes, args.width, 4).to(device).eval()
    volume = np.random.default_rng(3).standard_normal(pick_shape, dtype=np.float32)
    sync(device)
    t0 = time.monotonic()
    probs = predict_volume(model, volume, patch=args.patch, overlap=20, device=device)
    sync(device)
    t_net = time.monotonic() - t0
    t0 = time.monotonic()
    picks = cluster_picks(probs, 5, [3.0] * (n_classes - 1), 0.25)
    t_cluster = time.monotonic() - t0

    command = " ".join(run_args(sys.argv[1:] if argv is None else argv, flags=("--no-report",)))
    full = "Full (rp-tomo-train's defaults) " if (args.width, args.patch, args.batch) == (32, 64, 4) else "Reduced "
    where = device_words(device, args.threads)
    text = (
        f"Run: `python benchmarks/tomo_timing.py {command}`. "
        + machine_line()
        + f"\n{full}configuration: U-Net width {args.width}, depth 4, {args.patch}³ patches, minibatch {args.batch}, "
        f"{n_classes - 1} species + background, a meta step every iteration; on **{where}**. "
        f"Per iteration: (time of {args.iterations[1]} iterations - time of {args.iterations[0]}) / "
        f"{args.iterations[1] - args.iterations[0]}, the real training loop of each method, same run.\n\n"
        "| step | seconds |\n|---|---|\n"
        f"| one training iteration, plain U-Net (peer) | {per_it['plain']:.2f} |\n"
        f"| one training iteration, RobPicker (LC + DR) | {per_it['robpicker']:.2f} "
        f"({per_it['robpicker'] / per_it['plain']:.1f}x the plain U-Net's) |\n"
        f"| 2000 iterations (rp-tomo-train's default), RobPicker (estimate) | {2000 * per_it['robpicker']:.0f} |\n"
        f"| network over one {' x '.join(map(str, pick_shape))} tomogram (nz x ny x nx; {args.patch}³ patches, overlap 20) "
        f"| {t_net:.1f} |\n"
        f"| clustering its argmax (untrained weights: {len(picks)} components) | {t_cluster:.1f} |\n"
    )
    if peak is not None:
        text += f"\nPeak GPU memory allocated: {peak:.1f} GiB.\n"
    else:
        text += ("\nNo GPU was available for this measurement: these are CPU figures. The GPU times the issue "
                 "asks for are still to be measured with the same command on a GPU machine.\n")  # fmt: skip
    print(text, flush=True)
    if not args.no_report:
        update_section("tomo_timing", "## Tomogram picker: full-configuration timing\n\n" + text)


if __name__ == "__main__":
    main()
