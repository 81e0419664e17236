"""Benchmark: generative building blocks (``physforecast bench generative``).

Three measurements, CPU-sized:

1. **Sampling error against steps.** (a) With the *exact* model of a Gaussian random field
   (16x16, periodic, power spectrum ``~ (1 + |k|^2)^-2``), so that only the sampler and
   its schedule differ: flow matching with diffusers' Euler scheduler at shift 1 and
   shift 3, its Heun scheduler, DDIM, at 4/8/16/32 steps, against 1000-step ancestral
   DDPM. Error: mean absolute log-ratio of the samples' radially averaged power spectrum
   to the true one (0 is exact; the sampling noise of the ensemble is the floor that
   1000-step DDPM shows). (b) With *learned* models: the same small DiT trained
   with flow matching, DDPM with epsilon and DDPM with v prediction, for the same steps
   and seed, on a parameter-conditioned 2-D Gaussian; error: mean and covariance error of the samples.
2. **VAE per compression factor.** The causal 3-D VAE with circular padding trained for
   the same number of steps on 32x32 ns2d vorticity clips of 9 frames, for several
   (spatial, temporal) compressions: test rel-L2 and spectral error (the mean absolute
   log-ratio of the power spectra), latent size; and the tiled encoder's difference
   from the untiled one.
3. **DiT block throughput** against diffusers' ``HunyuanDiTBlock`` at the same width,
   heads and MLP width (diffusers' block also has its cross-attention, given one
   condition token), forward + backward, interleaved, as a ratio.
"""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Any

import torch

__all__ = ["run"]


def _machine() -> str:
    import diffusers

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
        f"(1/5/15 min) at the start, Python {platform.python_version()}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, {torch.get_num_threads()} torch thread(s)"
    )


# -- 1a: exact model of a Gaussian random field ----------------------------------------
def _grf_variances(size: int) -> torch.Tensor:
    k = torch.fft.fftfreq(size, 1.0 / size)
    k2 = k.reshape(-1, 1) ** 2 + k.reshape(1, -1) ** 2
    lam = (1.0 + k2) ** -2.0
    return (lam / lam.mean()).double()  # unit mean variance per point


def _in_modes(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Multiply every Fourier mode of real (B, 1, H, W) fields by a real symmetric gain."""
    return torch.fft.ifft2(torch.fft.fft2(x) * gain).real


def _flow_exact(lam: torch.Tensor):
    def velocity(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        s = float(timestep.reshape(-1)[0]) / 1000.0
        gain = (s - (1 - s) * lam) / ((1 - s) ** 2 * lam + s**2)
        return _in_modes(x, gain)

    return velocity


def _ddpm_exact(lam: torch.Tensor, abar: torch.Tensor):
    def epsilon(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        ab = float(abar[int(timestep.reshape(-1)[0])])
        a, b = math.sqrt(ab), math.sqrt(1 - ab)
        return _in_modes(x, b / (a**2 * lam + b**2))

    return epsilon


def _spectrum_error(samples: torch.Tensor, lam: torch.Tensor) -> float:
    """Mean |log| ratio of the samples' shell-averaged power to the expected one.

    A field with per-mode variance ``lam_k`` (orthonormal Fourier) has expected
    ``|FFT_k|^2 / (H W)^2 = lam_k / (H W)``, the convention of ``power_spectrum``.
    """
    from physforecast.metrics.spectral import power_spectrum

    size = lam.shape[-1]
    expected = _shell_mean(lam / (size * size), size)
    got = power_spectrum(samples[:, 0]).mean(dim=0)
    return float(torch.mean(torch.abs(torch.log(got / expected))))


def _shell_mean(values: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) mode values averaged over the shells ``round(|k|) = 0 .. size // 2``."""
    k = torch.fft.fftfreq(size, 1.0 / size)
    shell = torch.round(torch.sqrt(k.reshape(-1, 1) ** 2 + k.reshape(1, -1) ** 2)).long().flatten()
    sums = torch.zeros(int(shell.max()) + 1, dtype=values.dtype).index_add_(
        0, shell, values.flatten()
    )
    counts = torch.zeros_like(sums).index_add_(0, shell, torch.ones_like(values.flatten()))
    return (sums / counts)[: size // 2 + 1]


def _exact_sampling(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from physforecast.generative import DDPM, FlowMatching

    size, members = (8, 256) if quick else (16, 2048)
    lam = _grf_variances(size)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(members, 1, size, size, generator=g, dtype=torch.float64)
    ddpm = DDPM()
    abar = ddpm.scheduler().alphas_cumprod.double()
    steps_list = (4, 8) if quick else (4, 8, 16, 32)
    rows = []
    t0 = time.perf_counter()
    reference = ddpm.sample(
        _ddpm_exact(lam, abar),
        noise,
        steps=1000 if not quick else 100,
        sampler="ddpm",
        generator=torch.Generator().manual_seed(1),
    )
    ref_error = _spectrum_error(reference, lam)
    ref_time = time.perf_counter() - t0
    contenders = [
        (
            "flow Euler, shift 1",
            lambda n: FlowMatching(shift=1.0).sample(_flow_exact(lam), noise, steps=n),
            1,
        ),
        (
            "flow Euler, shift 3",
            lambda n: FlowMatching(shift=3.0).sample(_flow_exact(lam), noise, steps=n),
            1,
        ),
        (
            "flow Euler, shift 7",
            lambda n: FlowMatching(shift=7.0).sample(_flow_exact(lam), noise, steps=n),
            1,
        ),
        (
            "flow Heun, shift 1",
            lambda n: FlowMatching(shift=1.0).sample(
                _flow_exact(lam), noise, steps=n, solver="heun"
            ),
            2,
        ),
        (
            "DDIM (eta 0, trailing)",
            lambda n: ddpm.sample(_ddpm_exact(lam, abar), noise, steps=n, sampler="ddim"),
            1,
        ),
    ]
    for name, sample, calls in contenders:
        row: dict[str, Any] = {"sampler": name}
        for n in steps_list:
            row[n] = _spectrum_error(sample(n), lam)
        row["calls"] = calls
        rows.append(row)
    return rows, {
        "reference": ref_error,
        "reference_seconds": ref_time,
        "size": size,
        "members": members,
        "steps": steps_list,
    }


# -- 1b: learned models ----------------------------------------------------------------
_CHOL = torch.tensor([[0.7, 0.0], [0.5, 0.4]])


def _toy(p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(p.shape[0], 2, generator=g)
    return (torch.cat([2 * p, -p], dim=1) + z @ _CHOL.T).reshape(-1, 2, 1, 1)


def _learned_sampling(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from physforecast.generative import DDPM, DiTDenoiser, FlowMatching

    train_steps = 100 if quick else 1000
    processes = {
        "flow": FlowMatching(density="logit_normal"),
        "eps": DDPM(),
        "v": DDPM(prediction_type="v_prediction"),
    }
    models = {}
    params_count = 0
    for name, process in processes.items():
        torch.manual_seed(0)
        model = DiTDenoiser(2, cond_dim=1, hidden=64, depth=4, heads=4, patch=(1, 1, 1), rope=None)
        params_count = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, train_steps)
        g = torch.Generator().manual_seed(0)
        for _ in range(train_steps):
            p = torch.rand(256, 1, generator=g) * 2 - 1
            process.train_step(model, opt, _toy(p, g), params=p, generator=g)
            sched.step()
        models[name] = model.eval()
    n = 1000 if quick else 4000
    cov = _CHOL @ _CHOL.T

    def error(samples: torch.Tensor, value: float) -> float:
        s = samples.reshape(-1, 2).float()
        mean_err = float((s.mean(0) - torch.tensor([2 * value, -value])).norm())
        cov_err = float((torch.cov(s.T) - cov).norm())
        return mean_err + cov_err

    def evaluate(fn) -> float:
        total = 0.0
        for value in (-0.5, 0.5):
            g = torch.Generator().manual_seed(3)
            noise = torch.randn(n, 2, 1, 1, generator=g)
            total += error(fn(noise, torch.full((n, 1), value)), value) / 2
        return total

    steps_list = (4, 8) if quick else (4, 8, 16, 32)
    rows = []
    contenders = [
        ("flow Euler, shift 1", "flow", {"shift": 1.0}),
        ("flow Euler, shift 3", "flow", {"shift": 3.0}),
        ("flow Heun, shift 1 (2 calls/step)", "flow", {"solver": "heun"}),
        ("DDIM, epsilon model", "eps", {"sampler": "ddim"}),
        ("DDIM, v model", "v", {"sampler": "ddim"}),
    ]
    for label, key, options in contenders:
        row: dict[str, Any] = {"sampler": label}
        for steps in steps_list:
            row[steps] = evaluate(
                lambda noise, p, steps=steps, key=key, options=options: processes[key].sample(
                    models[key], noise, steps=steps, params=p, **options
                )
            )
        rows.append(row)
    ref_steps = 100 if quick else 1000
    references = {}
    for key in ("eps", "v"):
        references[key] = evaluate(
            lambda noise, p, key=key: processes[key].sample(
                models[key],
                noise,
                steps=ref_steps,
                sampler="ddpm",
                params=p,
                generator=torch.Generator().manual_seed(4),
            )
        )
    # the floor: the error of exact samples of the same size
    g = torch.Generator().manual_seed(5)
    floor = sum(error(_toy(torch.full((n, 1), v), g), v) for v in (-0.5, 0.5)) / 2
    return rows, {
        "reference": references["v"],
        "reference_eps": references["eps"],
        "reference_steps": ref_steps,
        "floor": floor,
        "train_steps": train_steps,
        "params": params_count,
        "members": n,
        "steps": steps_list,
    }


# -- 2: VAE per compression ------------------------------------------------------------
def _vae_compressions(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from physforecast.generative.vae import CausalVAE3D, spectral_loss, tiled_encode, vae_loss
    from physforecast.registry import DATASETS

    n_traj = 4 if quick else 8
    ds = DATASETS.create("ns2d", n_trajectories=n_traj, size=32, n_steps=9, seed=0, progress=False)
    w = torch.as_tensor(ds["vorticity"].values, dtype=torch.float32)
    w = ((w - w.mean()) / w.std()).unsqueeze(1)  # (traj, 1, 9, 32, 32)
    n_test = 2
    train, test = w[:-n_test], w[-n_test:]
    steps = 10 if quick else 80
    configs = [(2, 1), (4, 1), (4, 4), (8, 4)] if not quick else [(4, 4)]
    rows = []
    tiled_gap = None
    for s, t in configs:
        levels = max(int(math.log2(s)), int(math.log2(t))) + 1
        torch.manual_seed(0)
        vae = CausalVAE3D(
            1,
            latent_channels=8,
            spatial_compression=s,
            temporal_compression=t,
            block_channels=[16] + [32] * (levels - 1),
            padding_mode="circular",
        )
        opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
        start = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            recon, post = vae(train, generator=g)
            loss, _ = vae_loss(recon, train, post)
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            recon = vae(test, sample=False)[0]
            rel = float(
                ((recon - test).flatten(1).norm(dim=1) / test.flatten(1).norm(dim=1)).mean()
            )
            spec = float(spectral_loss(recon.transpose(1, 2), test.transpose(1, 2)))
            latent = vae.latent_shape(test.shape)
            if (s, t) == (4, 4):
                full = vae.encode(test).mean
                tiled = tiled_encode(vae, test, tile=16, overlap=8).mean
                tiled_gap = float((tiled - full).norm() / full.norm())
        elements = test[0].numel() / math.prod(latent[1:])
        rows.append(
            {
                "s": s,
                "t": t,
                "latent": list(latent[1:]),
                "ratio": elements,
                "rel_l2": rel,
                "spectral": spec,
                "params": sum(p.numel() for p in vae.parameters()),
                "seconds": seconds,
            }
        )
    return rows, {
        "steps": steps,
        "train_clips": int(train.shape[0]),
        "test_clips": n_test,
        "tiled_gap": tiled_gap,
    }


# -- 3: block throughput ---------------------------------------------------------------
def _throughput(quick: bool) -> dict[str, Any]:
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from diffusers.models.transformers.hunyuan_transformer_2d import HunyuanDiTBlock

    from physforecast.generative.dit import DiTBlock
    from physforecast.generative.rope import centered_positions, rope_angles

    dim, heads, side, batch = (128, 4, 16, 4)
    torch.manual_seed(0)
    ours = DiTBlock(dim, heads, mlp_ratio=4.0, qk_norm=True)
    theirs = HunyuanDiTBlock(
        dim,
        heads,
        cross_attention_dim=dim,
        activation_fn="gelu-approximate",
        ff_inner_dim=4 * dim,
        qk_norm=True,
    )
    n = side * side
    x = torch.randn(batch, n, dim)
    c = torch.randn(batch, dim)
    text = torch.randn(batch, 1, dim)
    angles = rope_angles(
        centered_positions((side, side), side), (dim // heads // 2, dim // heads // 2), 10000.0
    )
    rope = get_2d_rotary_pos_embed(dim // heads, ((0, 0), (side, side)), (side, side))

    def run_ours():
        out = ours(x, c, angles)
        out.sum().backward()

    def run_theirs():
        out = theirs(x, encoder_hidden_states=text, temb=c, image_rotary_emb=rope)
        out.sum().backward()

    for fn in (run_ours, run_theirs):
        fn()
    repeats = 3 if quick else 15
    times = {"ours": [], "theirs": []}
    for _ in range(repeats):
        for name, fn in (("ours", run_ours), ("theirs", run_theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        "dim": dim,
        "heads": heads,
        "tokens": n,
        "batch": batch,
        "repeats": repeats,
        "ours_ms": 1e3 * med["ours"],
        "theirs_ms": 1e3 * med["theirs"],
        "ratio": med["theirs"] / med["ours"],
        "ours_params": sum(p.numel() for p in ours.parameters()),
        "theirs_params": sum(p.numel() for p in theirs.parameters()),
    }


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) >= 1e-3 else f"{v:.2e}"


def run(quick: bool = False) -> str:
    """Run the three measurements and return the Markdown report."""
    torch.set_num_threads(1)
    machine = _machine()
    start = time.perf_counter()
    exact_rows, exact = _exact_sampling(quick)
    learned_rows, learned = _learned_sampling(quick)
    vae_rows, vae = _vae_compressions(quick)
    tp = _throughput(quick)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Generative building blocks",
        "",
        f"Command: `physforecast bench generative{' --quick' if quick else ''}` "
        f"({time.perf_counter() - start:.0f} s). Machine: {machine}; load average {load_end:.2f} at the end.",
        "",
        "## Sampling error against steps: exact model",
        "",
        f"Gaussian random field {exact['size']}x{exact['size']} (periodic, spectrum ~ (1+|k|^2)^-2), "
        f"{exact['members']} members from the same noise; the model is the exact velocity / noise "
        "prediction, so the numbers are the sampler's error alone. Error: mean |log P_sample(k) / P_true(k)| "
        "over wavenumber shells. "
        f"Reference, ancestral DDPM with {1000 if not quick else 100} steps: **{_fmt(exact['reference'])}** "
        "(this is also about the floor the ensemble's own sampling noise sets).",
        "",
        "| sampler | calls/step | " + " | ".join(f"{n} steps" for n in exact["steps"]) + " |",
        "|---|---|" + "---|" * len(exact["steps"]),
    ]
    for row in exact_rows:
        lines.append(
            f"| {row['sampler']} | {row['calls']} | "
            + " | ".join(_fmt(row[n]) for n in exact["steps"])
            + " |"
        )
    lines += [
        "",
        "## Sampling error against steps: learned models",
        "",
        f"The same DiT ({learned['params']} parameters, hidden 64, depth 4) trained three times: flow matching "
        f"(logit-normal), DDPM with epsilon and with v prediction (linear betas), {learned['train_steps']} AdamW "
        "steps each (cosine lr from 2e-3), batch 256, seed 0, on a "
        "2-D Gaussian whose mean moves with a parameter p (mean (2p, -p)); error = |mean error| + "
        f"||covariance error||_F of {learned['members']} samples at p = -0.5 and 0.5 (averaged). "
        f"Ancestral DDPM with {learned['reference_steps']} steps: **{_fmt(learned['reference'])}** (v model), "
        f"{_fmt(learned['reference_eps'])} (epsilon model); "
        f"exact samples of that size score {_fmt(learned['floor'])} (the floor).",
        "",
        "| sampler | " + " | ".join(f"{n} steps" for n in learned["steps"]) + " |",
        "|---|" + "---|" * len(learned["steps"]),
    ]
    for row in learned_rows:
        lines.append(
            f"| {row['sampler']} | " + " | ".join(_fmt(row[n]) for n in learned["steps"]) + " |"
        )
    lines += [
        "",
        "## Causal 3-D VAE per compression",
        "",
        f"ns2d vorticity 32x32, clips of 9 frames (normalized), {vae['train_clips']} training and "
        f"{vae['test_clips']} test clips, 8 latent channels, circular padding, {vae['steps']} Adam steps "
        "(lr 2e-3) of L1 + 1e-6 KL + 0.1 spectral, seed 0. rel-L2 and spectral error on the test clips "
        "through the posterior mean.",
        "",
        "| space x time | latent (z, T', h, w) | elements ratio | parameters | rel-L2 | spectral error | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in vae_rows:
        lines.append(
            f"| {r['s']}x / {r['t']}x | {tuple(r['latent'])} | {r['ratio']:.1f} | {r['params']} | "
            f"{r['rel_l2']:.4f} | {r['spectral']:.4f} | {r['seconds']:.0f} |"
        )
    if vae["tiled_gap"] is not None:
        lines += [
            "",
            f"Tiled encoding (16x16 tiles, overlap 8, linear blending in latent space) of the 4x/4x VAE "
            f"differs from the untiled encoding by a relative {vae['tiled_gap']:.4f} (L2 of the latent means).",
        ]
    lines += [
        "",
        "## DiT block throughput",
        "",
        f"Forward + backward of one block, width {tp['dim']}, {tp['heads']} heads, MLP 4x, QK-norm, "
        f"{tp['tokens']} tokens (16x16 grid, 2-D RoPE), batch {tp['batch']}, median of {tp['repeats']} "
        "interleaved repeats, one thread. diffusers' `HunyuanDiTBlock` (gelu-tanh, cross-attention to one "
        "condition token) against `physforecast.generative.dit.DiTBlock` (AdaLN-zero, no cross-attention).",
        "",
        "| block | parameters | ms per call |",
        "|---|---|---|",
        f"| DiTBlock (ours) | {tp['ours_params']} | {tp['ours_ms']:.2f} |",
        f"| HunyuanDiTBlock (diffusers) | {tp['theirs_params']} | {tp['theirs_ms']:.2f} |",
        "",
        f"Ratio (diffusers time / ours): **{tp['ratio']:.2f}**.",
    ]
    return "\n".join(lines) + "\n"
