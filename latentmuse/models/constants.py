"""Numbers the runtime needs from the networks without importing them (and diffusers/transformers)."""

#: Stable Diffusion's VAE latent scale (``vae.config.scaling_factor``).
SCALING_FACTOR = 0.18215
#: Whisper's input: 3000 mel frames (30 s at 100 per second) per segment.
MEL_FRAMES = 3000
#: Whisper encoder states per second of audio (the encoder halves the mel rate).
STATES_PER_SECOND = 50
#: ``--weights smoke``: seeded random weights in test-size configurations (models/smoke.py).
SMOKE = "smoke"
