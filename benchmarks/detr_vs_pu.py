"""The transformer picker (rp-detr-train / rp-detr-pick, run as RELION runs them): ablations and PU comparison.

With 5 and 20 labelled micrographs (every particle on them labelled; EMPIAR-10017 has only 14 training
micrographs, so its "20" uses all 14):
* pretrain (A-LoG pseudo-labels on all training micrographs) + fine-tune  vs  fine-tune only (random start),
* with contrastive denoising (CDN) vs without (fine-tuning without CDN from the same pretrained weights),
* hybrid augmentation vs none (5 labelled micrographs),
* the transformer picker vs the PU picker (rp-pu-train / rp-pu-pick) on the same labelled micrographs.
The same rows on both data sets.

Scored against all true particles of held-out test micrographs (simulated: 8 never used in training or
pretraining; EMPIAR: the 6 of the LoG / PU benchmarks): AUPR, F1 at each picker's own operating point
(detr: the score threshold of best validation F1 stored in the model; PU: calibrated score 0.5) and the
best F1 over thresholds. Nothing is tuned on the test micrographs.

Reduced CPU configuration (the default): model size tiny with the resnet_small backbone, particle 24 px,
crops 192 px, 1 thread; preprocessing normalisation only (on the validation micrographs of both data sets,
bilateral denoising + CLAHE gave lower F1: sim 0.73 vs 0.76, EMPIAR 0.81 vs 0.82); fine-tuning up to 40
epochs with patience 5 and one learning-rate drop.
Run:  nice -n 10 python benchmarks/detr_vs_pu.py [--datasets sim empiar] [--section NAME]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import device_words, machine_line, run_args, sync, update_section  # noqa: E402
from pu_vs_topaz import Dataset, empiar, expected_per_mic, score, simulated, write_labels  # noqa: E402

from relion_plugins.cli import run_external_like_relion  # noqa: E402
from relion_plugins.jobs.detr_train import PARAMS as DETR_TRAIN_PARAMS  # noqa: E402
from relion_plugins.pick.model_file import load_model  # noqa: E402
from relion_plugins.relion.coords import read_coordinate_list  # noqa: E402

SUCCESS = "RELION_JOB_EXIT_SUCCESS"
DEFAULT_SEED = 2025  # --seed when not given (the sections written without --seed)


def labelled_subset(ds: Dataset, n: int, seed: int) -> dict[str, np.ndarray]:
    """All true particles of ``n`` training micrographs drawn with ``seed`` (nested: the 5 are among the 20)."""
    order = np.random.default_rng(seed).permutation(len(ds.train))
    names = [ds.train[i] for i in order[: min(n, len(ds.train))]]
    return {name: np.asarray(ds.truth.get(name, np.zeros((0, 2))), float) for name in names}


def logged_seconds(job_dir: Path) -> float:
    """The run time a finished job logged in its run.out ("done in M:SS" or "H:MM:SS")."""
    import re

    found = re.findall(r"^ done in ([\d:]+)$", (job_dir / "run.out").read_text(), re.M)
    if not found:
        raise RuntimeError(f"{job_dir}: no 'done in' line in run.out")
    seconds = 0.0
    for part in found[-1].split(":"):
        seconds = 60 * seconds + float(part)
    return seconds


def run_job(ds: Dataset, job: str, exe: str, args: list[str], reuse: bool = False) -> float:
    """Run a job as RELION does and return its wall time; with ``reuse``, a job that already finished in
    the work directory is kept and its logged time returned."""
    if reuse and (ds.project / job / SUCCESS).exists():
        return logged_seconds(ds.project / job)
    shutil.rmtree(ds.project / job, ignore_errors=True)
    t0 = time.monotonic()
    if run_external_like_relion(ds.project, job, exe, args, threads=1, timeout=3600) != SUCCESS:
        raise RuntimeError(f"{exe} {job}: " + (ds.project / job / "run.err").read_text())
    return time.monotonic() - t0


def picks_of(ds: Dataset, job: str) -> dict[str, np.ndarray]:
    tables = read_coordinate_list(ds.project / job / "autopick.star", ds.project)
    cols = ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
    return {n: t[cols].to_numpy(float) for n, t in tables.items()}


REUSE_NOTE = (
    "Train jobs reused from an earlier run of the same command in the same work directory (`--reuse_training`; "
    "train s = the time that run logged): picking, thresholds and scores are from this run. "
)


def detr_queries(ds: Dataset, args: argparse.Namespace) -> int:
    """Decoder queries: the model size's, or ``--queries_per_particle`` x the particles a crop holds on
    average (from the count per micrograph a user gives both pickers), rounded up to 10, if that is more.
    A DETR needs queries to spare over the objects of an image: EMPIAR-10017's crops hold up to 54
    particles, close to the tiny model's 60 queries."""
    import mrcfile

    from relion_plugins.jobs.detr_train import auto_queries
    from relion_plugins.pick.detr.model import PRESETS

    with mrcfile.open(ds.project / ds.mics_table["rlnMicrographName"].iloc[0], header_only=True, permissive=True) as m:
        ny, nx = int(m.header.ny), int(m.header.nx)
    shrink = args.scaled_diameter / (ds.diameter_A / ds.angpix)
    return auto_queries(PRESETS[args.size].queries, expected_per_mic(ds), [(ny * shrink, nx * shrink)], args.crop,
                        args.queries_per_particle)[0]  # fmt: skip


def validated_threshold(ds: Dataset, mf, views: int) -> float:
    """The score threshold rp-detr-pick uses with ``--tta views``: stored by rp-detr-train, or, for a model
    trained before it stored one per view count by the current rule (``--reuse_training``), found as
    rp-detr-train now finds it, with the same scorer on the model's validation micrographs."""
    stored = mf.meta.get("thresholds") or {}
    if str(views) in stored:
        return float(stored[str(views)])
    import mrcfile

    from relion_plugins.jobs.detr_train import validation_scorer
    from relion_plugins.pick.detr.model import build_model
    from relion_plugins.pick.detr.preprocess import PreprocessConfig, prepare

    model = build_model(mf.arch)
    model.load_state_dict(mf.state)
    work = float(mf.meta["angpix"])
    images, coords = [], []
    for name in mf.meta["provenance"]["validation_micrographs"]:
        raw = mrcfile.read(ds.project / name).astype(np.float32)
        img = prepare(raw, ds.angpix, work, PreprocessConfig.from_dict(mf.meta["preprocess"]))
        images.append(img)
        coords.append(np.asarray(ds.truth[name], float) * img.shape[1] / raw.shape[1])
    diameter_px = float(mf.meta["diameter_A"]) / work
    return validation_scorer(images, coords, diameter_px, int(mf.meta["crop"]), "cpu", views=views)(model)[1]


# benchmark options passed on to every rp-detr-train call when given (None: rp-detr-train's own default)
PASSED_TO_TRAIN = ("ema_decay", "grad_clip", "lambda_l", "lambda_p", "lambda_n")


class Runner:
    def __init__(self, ds: Dataset, args: argparse.Namespace) -> None:
        self.ds, self.args = ds, args
        self.test_mics = ds.write_subset("test_mics.star", ds.test)
        self.common = ["--diameter", str(ds.diameter_A), "--model_size", args.size, "--scaled_diameter",
                       str(args.scaled_diameter), "--crop", str(args.crop), "--learning_rate", str(args.lr),
                       "--steps_per_epoch", "100", "--seed", str(args.seed)]  # fmt: skip
        if args.backbone:
            self.common += ["--backbone", args.backbone]
        for name in PASSED_TO_TRAIN:
            if getattr(args, name) is not None:
                self.common += [f"--{name}", str(getattr(args, name))]
        self.queries = detr_queries(ds, args)
        self.common += ["--queries", str(self.queries)]
        self.common += ["--denoise", args.denoise, "--equalize", args.equalize]
        self.pretrained = ""

    def pretrain(self) -> float:
        job = "External/detr_pretrain/"
        mics = self.ds.write_subset("train_mics.star", self.ds.train)
        ppm = expected_per_mic(self.ds)
        args = ["--in_mics", mics, "--mode", "pretrain", "--pretrain_epochs", str(self.args.pretrain_epochs),
                "--pretrain_topk", str(int(round(1.2 * ppm))), *self.common]  # fmt: skip
        seconds = run_job(self.ds, job, "rp-detr-train", args, self.args.reuse_training)
        self.pretrained = f"{job}model.pt"
        return seconds

    def detr(self, tag: str, n: int, labels: dict, extra: list[str], pretrained: bool) -> tuple:
        ds = self.ds
        listing = write_labels(ds, labels, f"Labels/n{n}/")
        mics = ds.write_subset(f"labelled_{n}.star", list(labels))
        train_job, pick_job = f"External/{tag}_train/", f"External/{tag}_pick/"
        args = ["--in_mics", mics, "--in_coords", listing, "--mode", "finetune", "--epochs", str(self.args.epochs),
                "--patience", str(self.args.patience), "--lr_drops", str(self.args.lr_drops), *self.common, *extra]  # fmt: skip
        if pretrained:
            args += ["--init_model", self.pretrained]
        t_train = run_job(ds, train_job, "rp-detr-train", args, self.args.reuse_training)
        model = load_model(ds.project / train_job / "model.pt", picker="detr")
        thr = validated_threshold(ds, model, self.args.tta)
        t_pick = run_job(ds, pick_job, "rp-detr-pick", ["--in_mics", self.test_mics, "--model", f"{train_job}model.pt",
                                                          "--threshold", "0", "--tta", str(self.args.tta),
                                                          *([] if self.args.pick_nms else ["--nms", "No"])])  # fmt: skip
        return score(ds, picks_of(ds, pick_job), thr), t_train, t_pick

    def pu(self, tag: str, n: int, labels: dict) -> tuple:
        ds = self.ds
        listing = write_labels(ds, labels, f"Labels/n{n}/")
        mics = ds.write_subset(f"labelled_{n}.star", list(labels))
        train_job, pick_job = f"External/{tag}_train/", f"External/{tag}_pick/"
        epochs = max(1, self.args.pu_steps // 100)
        args = ["--in_mics", mics, "--in_coords", listing, "--diameter", str(ds.diameter_A),
                "--scaled_diameter", f"{ds.diameter_A / (ds.angpix * ds.scale):.4f}",
                "--particles_per_mic", f"{expected_per_mic(ds):.2f}", "--objective", "PN", "--epochs", str(epochs),
                "--steps_per_epoch", "100", "--patience", str(epochs), "--seed", str(self.args.seed)]  # fmt: skip
        t_train = run_job(ds, train_job, "rp-pu-train", args, self.args.reuse_training)
        t_pick = run_job(ds, pick_job, "rp-pu-pick", ["--in_mics", self.test_mics, "--model",
                                                        f"{train_job}model.pt", "--threshold", "0"])  # fmt: skip
        return score(ds, picks_of(ds, pick_job), 0.5), t_train, t_pick


PLAN = {  # dataset -> (tag, labelled micrographs, picker, extra args, from pretrained weights)
    "sim": [
        ("full5", 5, "detr: pretrain + fine-tune, CDN, hybrid aug.", [], True),
        ("ft5", 5, "detr: fine-tune only", [], False),
        ("noaug5", 5, "detr: pretrain + fine-tune, no augmentation", ["--augment", "none"], True),
        ("pu5", 5, "PU (PN)", None, None),
        ("full20", 20, "detr: pretrain + fine-tune, CDN, hybrid aug.", [], True),
        ("ft20", 20, "detr: fine-tune only", [], False),
        ("nocdn20", 20, "detr: pretrain + fine-tune without CDN", ["--cdn", "No"], True),
        ("pu20", 20, "PU (PN)", None, None),
    ],
    "empiar": [
        ("full5", 5, "detr: pretrain + fine-tune, CDN, hybrid aug.", [], True),
        ("ft5", 5, "detr: fine-tune only", [], False),
        ("noaug5", 5, "detr: pretrain + fine-tune, no augmentation", ["--augment", "none"], True),
        ("pu5", 5, "PU (PN)", None, None),
        ("full20", 20, "detr: pretrain + fine-tune, CDN, hybrid aug.", [], True),
        ("ft20", 20, "detr: fine-tune only", [], False),
        ("nocdn20", 20, "detr: pretrain + fine-tune without CDN", ["--cdn", "No"], True),
        ("pu20", 20, "PU (PN)", None, None),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["sim", "empiar"], choices=["sim", "empiar"])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "full"])
    parser.add_argument(
        "--backbone",
        default="resnet_small",
        help="backbone instead of the model size's (rp-detr-train --backbone)",
    )
    parser.add_argument("--denoise", default="none", choices=["bilateral", "none"])
    parser.add_argument("--equalize", default="none", choices=["clahe", "hist", "none"])
    parser.add_argument("--patience", type=int, default=5, help="fine-tuning patience, epochs")
    parser.add_argument(
        "--lr_drops", type=int, default=1, help="learning-rate drops on a plateau before stopping"
    )
    parser.add_argument("--grad_clip", type=float, default=None, help="rp-detr-train --grad_clip (default: its own)")
    parser.add_argument("--ema_decay", type=float, default=None, help="rp-detr-train --ema_decay (default: its own)")
    for name, what in (("lambda_l", "label-noise rate"), ("lambda_p", "positive box noise"),
                       ("lambda_n", "hard-negative box noise")):  # fmt: skip
        parser.add_argument(f"--{name}", type=float, default=None,
                            help=f"rp-detr-train --{name}, the CDN {what} (default: its own)")  # fmt: skip
    parser.add_argument("--scaled_diameter", type=float, default=24.0)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--epochs", type=int, default=40, help="fine-tuning epochs of 100 minibatches (at most)"
    )
    parser.add_argument("--pretrain_epochs", type=int, default=4)
    parser.add_argument("--queries_per_particle", type=float, default=5.0,
                        help="decoder queries per expected particle in a crop (at least the model size's queries)")  # fmt: skip
    parser.add_argument("--pu_steps", type=int, default=200, help="PU minibatches")
    parser.add_argument("--tta", type=int, default=4, choices=[1, 4, 8], help="rp-detr-pick --tta (views)")
    parser.add_argument("--no_pick_nms", dest="pick_nms", action="store_false",
                        help="rp-detr-pick --nms No: the transformer's own set prediction, duplicates and all (the "
                             "operating point stays the one validated with NMS: compare AUPR and best F1)")
    parser.add_argument("--reuse_training", action="store_true",
                        help="keep the finished train jobs of --workdir (their logged times count) and pick again")  # fmt: skip
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--section", default="detr_vs_pu")
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only these rows (tags of PLAN, e.g. full5 pu5)"
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="detr_vs_pu_"))
    args.queries_used = {}
    rows: list[tuple] = []
    pretrain_s: dict[str, float] = {}
    for key in args.datasets:
        ds = simulated(workdir, 24, 8, args.seed) if key == "sim" else empiar(workdir)
        runner = Runner(ds, args)
        args.queries_used[ds.name] = runner.queries
        pretrain_s[ds.name] = (
            runner.pretrain() if any(p[4] for p in PLAN[key] if not args.only or p[0] in args.only) else 0.0
        )
        print(ds.name, "pretraining", f"{pretrain_s[ds.name]:.0f} s", flush=True)
        for tag, n, who, extra, pretrained in PLAN[key]:
            if args.only and tag not in args.only:
                continue
            labels = labelled_subset(ds, n, args.seed)
            if extra is None:
                res = runner.pu(tag, n, labels)
            else:
                res = runner.detr(tag, n, labels, extra, pretrained)
            print(ds.name, n, who, res, flush=True)
            rows.append((key, ds.name, len(labels), tag, who, *res))
            report(args, rows, pretrain_s)


def _f1(rows, key, tag) -> float | None:
    for r in rows:
        if r[0] == key and r[3] == tag:
            return r[5]["f1"]
    return None


def acceptance(rows, pair=None) -> list[str]:
    """Which of the issue's acceptance directions held on this run (F1 at the operating point).
    ``pair(key, tag_a, tag_b)``, when given, supplies the two F1s compared (means over the runs both have)."""
    checks = []

    def check(text, key, a, b):
        fa, fb = pair(key, a, b) if pair else (_f1(rows, key, a), _f1(rows, key, b))
        if fa is None or fb is None:
            return
        ok = fa >= fb - 1e-9 if "PU" in text else fa > fb  # 1e-9: a tie of means summed in another order
        checks.append(
            f"| {text} | {key} | {fa:.3f} vs {fb:.3f} | {'**held**' if ok else '**did not hold**'} |"
        )

    for key in ("sim", "empiar"):
        check("pretrain + fine-tune > fine-tune only, 5 labelled", key, "full5", "ft5")
        check("pretrain + fine-tune > fine-tune only, 20 labelled", key, "full20", "ft20")
        check("with CDN > without, 20 labelled", key, "full20", "nocdn20")
        check("hybrid augmentation > none, 5 labelled", key, "full5", "noaug5")
        check("detr F1 >= PU F1, 20 labelled", key, "full20", "pu20")
    return checks


def _train_value(args: argparse.Namespace, name: str) -> float:
    """The value rp-detr-train runs with: the benchmark's option, else rp-detr-train's default."""
    value = getattr(args, name)
    return value if value is not None else next(q.default for q in DETR_TRAIN_PARAMS if q.name == name)


def _averaging(args: argparse.Namespace) -> str:
    decay = _train_value(args, "ema_decay")
    if not decay:
        return "the weights themselves are validated and kept"
    return f"a moving average of the weights, decay {decay:g} per minibatch, is validated and kept"


def _cdn_noise(args: argparse.Namespace) -> str:
    values = {name: _train_value(args, name) for name in ("lambda_l", "lambda_p", "lambda_n")}
    return (f"contrastive denoising: label noise {values['lambda_l']:g}, box noise of positives below "
            f"{values['lambda_p']:g}, of hard negatives {values['lambda_p']:g} to {values['lambda_n']:g} (rows with CDN)")  # fmt: skip


def _describe(size: str, backbone: str = "") -> str:
    from relion_plugins.pick.detr.model import PRESETS

    c = PRESETS[size]
    return f"{backbone or c.backbone} backbone, {c.dim}-d, {c.enc_layers} encoder + {c.dec_layers} decoder layers"


def report(args: argparse.Namespace, rows: list[tuple], pretrain_s: dict[str, float]) -> None:
    lines = [
        "Run: `nice -n 10 python benchmarks/detr_vs_pu.py "
        + " ".join(run_args(sys.argv[1:], with_value=("--workdir",)))  # a temporary path says nothing
        + "`. "
        + machine_line(),
        f"Reduced CPU configuration, 1 thread: transformer model size `{args.size}` ({_describe(args.size, args.backbone)}), particle {args.scaled_diameter:g} px, crops {args.crop} px, minibatch 2, "
        f"decoder queries: the larger of the model size's and {args.queries_per_particle:g} x the expected particles per crop, rounded up to 10 ("
        + ", ".join(f"{k}: {v}" for k, v in args.queries_used.items()) + "); "
        f"preprocessing: normalisation, denoising {args.denoise}, equalisation {args.equalize}; "
        f"AdamW lr {args.lr:g}; pretraining {args.pretrain_epochs} x 100 minibatches on all training micrographs "
        f"with A-LoG top-K pseudo-labels (K = 1.2 x the mean particle count); fine-tuning at most {args.epochs} x 100 "
        f"minibatches, early stopping on validation F1 (20% of the labelled micrographs held out; {_averaging(args)}; after {args.patience} epochs "
        f"without gain the learning rate drops 10x from the best epoch, {args.lr_drops} time(s), then training stops); {_cdn_noise(args)}. "
        f"PU picker: resnet8 from its shipped weights, PN objective (every particle of its micrographs is labelled, "
        f"so the rest is negative; GE-binomial refuses a prior at the labelled fraction), {args.pu_steps} minibatches of 256. Every particle of the labelled micrographs is labelled. F1 at each "
        "picker's own operating point (detr: the validated threshold stored in the model for its views; PU: "
        f"calibrated 0.5). Transformer picks with test-time augmentation over {args.tta} view(s) (`--tta {args.tta}`)"
        + ("" if args.pick_nms else ", without NMS (`--nms No`; the thresholds were validated with it)") + ". "
        + (REUSE_NOTE if args.reuse_training else "") +
        "EMPIAR-10017 has 14 training micrographs: its '20' row uses all 14. The full configuration (ResNet-50, "
        "6 + 6 layers, 300 queries) was not run: no GPU was available.",
        "",
        "| data | labelled mics | picker | AUPR | F1 | best F1 | train s | pick s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _key, name, n, _tag, who, res, t_train, t_pick in rows:
        lines.append(f"| {name} | {n} | {who} | {res['aupr']:.3f} | {res['f1']:.3f} | {res['best_f1']:.3f} "
                     f"| {t_train:.0f} | {t_pick:.1f} |")  # fmt: skip
    if pretrain_s:
        done = ", ".join(f"{k}: {v:.0f} s" for k, v in pretrain_s.items())
        lines.append(f"\nPretraining, shared by the pretrained rows of a data set, took {done}.")
    checks = acceptance(rows)
    if checks:
        lines += ["", "| acceptance direction | data | F1 | result |", "|---|---|---|---|", *checks]
        lines.append(
            "\nOne seed and one draw of labelled micrographs: `--summarise` over runs with other seeds gives "
            "the spread (section `detr_vs_pu_seeds`)."
        )
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    names = ", ".join(dict.fromkeys(r[1] for r in rows))
    update_section(args.section, f"## Transformer picker (UPicker method) vs PU picker: {names}\n\n" + text)


def timing(argv: list[str] | None = None) -> None:
    """Train-step and pick time of the full configuration (ResNet-50, 6 + 6 layers, 300 queries) on one
    simulated 4096² micrograph: on the GPU when torch sees one, else on the CPU (said so in the table).

    Run:  python benchmarks/detr_vs_pu.py --timing [--steps 20]"""
    import torch

    from relion_plugins.pick.detr.losses import LossWeights, total_loss
    from relion_plugins.pick.detr.model import DetrConfig, build_model
    from relion_plugins.pick.detr.predict import detect
    from relion_plugins.pick.detr.preprocess import PreprocessConfig, prepare
    from relion_plugins.pick.detr.train import CropSampler
    from relion_plugins.simulate.micrograph import MicrographConfig, simulate_micrograph

    parser = argparse.ArgumentParser()
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sim = simulate_micrograph(MicrographConfig(shape=(4096, 4096), angpix=1.0), np.random.default_rng(1))
    work = max(1.0, sim.diameter_A / 24.0)
    t0 = time.monotonic()
    img = prepare(sim.image, 1.0, work, PreprocessConfig())
    t_pre = time.monotonic() - t0
    xy = sim.particles * img.shape[1] / sim.image.shape[1]
    model = build_model(DetrConfig(anchor_px=sim.diameter_A / work)).to(device)
    sampler = CropSampler([img], [xy], sim.diameter_A / work, 256, 0, True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(args.steps + 2):
        if i == 2:  # the first steps include allocator warm-up
            sync(device)
            t0 = time.monotonic()
        x, targets = sampler.batch(2, device)
        loss, _ = total_loss(model(x, targets), targets, LossWeights())
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    per_step = (time.monotonic() - t0) / args.steps
    t_pick = {}
    for views in (1, 4):  # rp-detr-pick --tta 1 and the default 4
        t0 = time.monotonic()
        x, _, _ = detect(model, img, 256, overlap=24, device=device, nms_radius=14.4, views=views)
        sync(device)
        t_pick[views] = time.monotonic() - t0
    where = device_words(device, args.threads)
    text = (
        f"Run: `python benchmarks/detr_vs_pu.py --timing --steps {args.steps} --threads {args.threads}`. "
        + machine_line()
        + f"\nFull configuration (ResNet-50, 256-d, 6 + 6 layers, 300 queries, CDN on) on **{where}**; one simulated "
        f"4096² micrograph at 1 Å/px, particle {sim.diameter_A:.0f} Å scaled to 24 px ({img.shape[1]}² px at "
        f"{work:.2f} Å/px), crops / patches 256 px, minibatch 2.\n\n"
        "| step | seconds |\n|---|---|\n"
        f"| one training minibatch | {per_step:.2f} |\n"
        f"| 100-minibatch epoch (estimate) | {100 * per_step:.0f} |\n"
        f"| preprocessing one 4096² micrograph | {t_pre:.1f} |\n"
        f"| picking one 4096² micrograph, 1 view (`--tta 1`; after preprocessing; untrained weights) | {t_pick[1]:.1f} |\n"
        f"| picking one 4096² micrograph, 4 views (`--tta 4`, the default; {len(x)} detections) | {t_pick[4]:.1f} |\n"
    )
    if device.type != "cuda":
        text += ("\nNo GPU was available for this measurement: these are CPU figures (untrained weights: picking "
                 "time does not depend on them). The GPU train and per-micrograph pick times the issue asks for "
                 "are still to be measured with the same command on a GPU machine.\n")  # fmt: skip
    print(text, flush=True)
    update_section("detr_vs_pu_timing", "## Transformer picker: full-configuration timing\n\n" + text)


def summarise(sections: list[str], out_section: str) -> None:
    """Mean +- sd over runs with other seeds (their sections of the benchmarks page) of each row's F1, and
    the acceptance directions on the means.

    Run:  python benchmarks/detr_vs_pu.py --summarise detr_vs_pu detr_vs_pu_seed2026 detr_vs_pu_seed2027"""
    import re

    from _report import PAGE

    page = PAGE.read_text()
    keys = {"simulated": "sim", "EMPIAR": "empiar"}
    tags = {(key, who, n): tag for key, plan in PLAN.items() for tag, n, who, *_ in plan}
    f1s: dict[tuple, list[float]] = {}
    by_run: dict[tuple, dict[str, float]] = {}  # (data set, tag) -> section -> F1
    found = []
    for name in sections:
        m = re.search(rf"<!-- begin {re.escape(name)} -->(.*?)<!-- end {re.escape(name)} -->", page, re.S)
        if m is None:
            raise SystemExit(f"no section {name!r} in {PAGE}")
        seed = re.search(r"--seed (\d+)", m.group(1))
        found.append(f"`{name}` (seed {seed.group(1) if seed else DEFAULT_SEED})")
        for line in m.group(1).splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 8 or not cells[1].isdigit():
                continue
            key = next((k for prefix, k in keys.items() if cells[0].startswith(prefix)), None)
            n = int(cells[1])
            tag = tags.get((key, cells[2], 5 if n <= 5 else 20))
            if tag is not None:
                f1s.setdefault((key, cells[0], n, tag, cells[2]), []).append(float(cells[4]))
                by_run.setdefault((key, tag), {})[name] = float(cells[4])
    lines = [
        "Run: `python benchmarks/detr_vs_pu.py --summarise "
        + " ".join(sections)
        + "`, from the sections "
        + ", ".join(found)
        + " of this page (same configuration, other seeds: another simulated data set and "
        "another draw of labelled micrographs; EMPIAR-10017 only where a section has it).",
        "",
        "| data | labelled mics | picker | runs | F1 mean ± sd | F1 per run |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for (key, data, n, tag, who), v in f1s.items():
        a = np.asarray(v)
        sd = f"{a.std(ddof=1):.3f}" if len(a) > 1 else "-"
        lines.append(
            f"| {data} | {n} | {who} | {len(a)} | {a.mean():.3f} ± {sd} | {' '.join(f'{x:.3f}' for x in a)} |"
        )
        rows.append((key, data, n, tag, who, {"f1": float(a.mean())}))
    def paired(key, a, b):
        runs_a, runs_b = by_run.get((key, a), {}), by_run.get((key, b), {})
        both = [r for r in runs_a if r in runs_b]
        if not both:
            return None, None
        return float(np.mean([runs_a[r] for r in both])), float(np.mean([runs_b[r] for r in both]))

    checks = acceptance(rows, paired)
    if checks:
        lines += [
            "",
            "| acceptance direction (on the mean F1 of the runs both rows have) | data | F1 | result |",
            "|---|---|---|---|",
            *checks,
        ]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    update_section(out_section, "## Transformer picker vs PU picker over seeds\n\n" + text)


if __name__ == "__main__" and "--summarise" in sys.argv:
    summarise(sys.argv[sys.argv.index("--summarise") + 1 :], "detr_vs_pu_seeds")
    sys.exit(0)


if __name__ == "__main__" and "--timing" in sys.argv:
    timing()
    sys.exit(0)


if __name__ == "__main__":
    main()
