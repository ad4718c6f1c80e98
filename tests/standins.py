"""Stand-in runners of known function, so an output frame can be computed independently.

* VAE encoder: 8 x 8 block means of the three colour channels, plus their mean as channel 4;
  decoder: nearest x 8 upsampling of channels 1-3, mapped from [-1, 1] to [0, 1]. ``decode(encode(x))``
  is the blocky image, known exactly.
* UNet3D: a "landing" denoiser whose noise prediction makes every DDIM step land exactly on the
  reference latent (channels 9-12 of its input); it ignores the audio, so with or without guidance the
  final latent is the reference latent. It records every call's timestep and audio.
* MuseTalk UNet: returns its reference latent (channels 5-8).
* BiSeNet: "skin" everywhere. Whisper post-LayerNorm: identity.

The scheduler constants here are the closed form, written independently of the runtime's DDIM.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from latentmuse.models.smoke import smoke_model
from latentmuse.graphs import wrappers as graphs
from latentmuse.runtime.runner_set import ModelSet
from latentmuse.runners.torch_runner import TorchRunner


class FnRunner:
    def __init__(self, name: str, fn: Callable[..., dict]) -> None:
        self.name, self.fn, self.device = name, fn, torch.device("cpu")

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.fn(**inputs)


def block_encode(image: torch.Tensor) -> torch.Tensor:
    pooled = F.avg_pool2d(image.float(), 8)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


def block_decode(latent: torch.Tensor) -> torch.Tensor:
    return (F.interpolate(latent[:, :3].float(), scale_factor=8, mode="nearest") / 2 + 0.5).clamp(0, 1)


def alphas_cumprod() -> np.ndarray:
    s = np.arange(1000)
    return np.cumprod(1 - (math.sqrt(0.00085) + s * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2)


class LandingDenoiser:
    """eps such that sqrt(a_prev) x0(eps) + sqrt(1 - a_prev) eps == reference latent, for ``steps`` steps."""

    name, device = "unet3d", torch.device("cpu")

    def __init__(self, steps: int) -> None:
        self.ratio = 1000 // steps
        self.a = alphas_cumprod()
        self.calls: list[dict] = []
        self.fail: Callable[[int], None] | None = None  # called with the call number; may raise
        self.corrupt: Callable[[int, torch.Tensor], torch.Tensor] | None = None

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        number = len(self.calls)
        self.calls.append({"t": inputs["timestep"].tolist(), "audio": inputs["audio"].clone(),
                           "shape": tuple(inputs["sample"].shape)})
        if self.fail is not None:
            self.fail(number)
        sample = inputs["sample"].double()
        x, ref = sample[:, :4], sample[:, 9:13]
        t = int(inputs["timestep"][0])
        a_t = self.a[t]
        a_prev = self.a[t - self.ratio] if t - self.ratio >= 0 else self.a[0]
        k = math.sqrt(a_prev) / math.sqrt(a_t)
        m = math.sqrt(1 - a_prev) - math.sqrt(a_prev) * math.sqrt(1 - a_t) / math.sqrt(a_t)
        eps = ((ref - k * x) / m).float()
        if self.corrupt is not None:
            eps = self.corrupt(number, eps)
        return {"eps": eps}


def standin_models(steps: int, whisper_runner=None) -> tuple[ModelSet, LandingDenoiser]:
    """A ModelSet of stand-ins (the real tiny Whisper unless ``whisper_runner`` is given)."""
    denoiser = LandingDenoiser(steps)
    whisper = whisper_runner or TorchRunner("whisper_encoder", graphs.WhisperEncoderGraph(smoke_model("whisper")))

    def skin(image: torch.Tensor) -> dict:
        logits = torch.zeros(image.shape[0], 19, *image.shape[2:])
        logits[:, 1] = 1.0
        return {"logits": logits}

    runners = {
        "whisper_encoder": whisper,
        "whisper_post_ln": FnRunner("whisper_post_ln", lambda states: {"normed": states}),
        "vae_encoder": FnRunner("vae_encoder", lambda image: {"latent": block_encode(image)}),
        "vae_decoder": FnRunner("vae_decoder", lambda latent: {"image": block_decode(latent)}),
        "musetalk_unet": FnRunner("musetalk_unet", lambda latents, audio: {"latent": latents[:, 4:8].clone()}),
        "bisenet": FnRunner("bisenet", skin),
        "unet3d": denoiser,
    }
    return ModelSet(runners, None, "1.5"), denoiser


class OutOfMemoryAbove:
    """Wraps a runner: a call with more than ``limit`` items in its batch (dim 0 of its first input)
    raises ``torch.OutOfMemoryError`` as CUDA does; others run the wrapped runner. ``limit=0``: every
    call runs out of memory. ``batches`` records every call's batch, in order."""

    def __init__(self, runner, limit: int) -> None:
        self.runner, self.limit = runner, limit
        self.name, self.device = runner.name, runner.device
        self.batches: list[int] = []

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = next(iter(inputs.values())).shape[0]
        self.batches.append(batch)
        if batch > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch} x 2.00 GiB")
        return self.runner(inputs)


def whisper_standin() -> FnRunner:
    """A Whisper encoder of known function, in milliseconds (the tiny real one takes seconds per 30 s
    segment): mel (1, 80, 3000) -> states (1, 1500, 5, 384), each step the mean of two mel frames, the
    80 bins tiled to 384, in all five slots. Audio still matters: each frame's window differs."""
    def encode(mel: torch.Tensor) -> dict:
        steps = F.avg_pool1d(mel.float(), 2).transpose(1, 2)  # (1, 1500, 80)
        tiled = steps.repeat(1, 1, 5)[..., :384]
        return {"states": tiled[:, :, None].expand(-1, -1, 5, -1).contiguous()}
    return FnRunner("whisper_encoder", encode)


class Notes:
    """A progress sink that keeps the notes (the messages a run would show) for the tests to read."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def start(self, stage, total):
        pass

    def advance(self, stage, amount=1):
        pass

    def status(self, text):
        pass

    def note(self, message):
        self.messages.append(message)


def twenty_frame_sample(folder):
    """0.8 s at 25 fps, 200 x 200: 20 frames, faces in 0-4 and 10-19 (15 process frames), 5-9 a faceless cutaway."""
    from fractions import Fraction

    from latentmuse.samples import build_sample

    sample = build_sample(folder, seconds=Fraction(4, 5), size=(200, 200), cutaway=(Fraction(1, 5), Fraction(2, 5)))
    assert sample.frame_count == 20 and list(sample.cutaway_frames) == list(range(5, 10))
    return sample


def run_concurrently(target, args_list) -> list[BaseException]:
    """``target(*args)`` in one thread per ``args``, all started together; the exceptions they raised."""
    import threading

    start = threading.Barrier(len(args_list))
    errors: list[BaseException] = []

    def body(*args) -> None:
        try:
            start.wait()
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=args) for args in args_list]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def counted_standin_loads(monkeypatch) -> dict:
    """Runs load stand-in models (of :func:`standin_models`) behind a counter: ``["n"]`` loads so far."""
    from latentmuse.runtime import session

    models, _ = standin_models(steps=1, whisper_runner=whisper_standin())
    counter = {"n": 0, "models": models}

    def load(*args, **kwargs):
        counter["n"] += 1
        return models

    monkeypatch.setattr(session, "load_run_models", load)
    return counter
