"""Numbers the runtime needs from the networks without importing them (and diffusers/transformers)."""

#: Stable Diffusion's VAE latent scale (``vae.config.scaling_factor``).
SCALING_FACTOR = 0.18215
#: Whisper's input: 3000 mel frames (30 s at 100 per second) per segment.
MEL_FRAMES = 3000
#: Whisper encoder states per second of audio (the encoder halves the mel rate).
STATES_PER_SECOND = 50
#: ``--weights smoke``: seeded random weights in test-size configurations (models/smoke.py).
SMOKE = "smoke"
#: SyncNet v2's inputs and outputs (models/syncnet.py, runtime/sync.py): 13 MFCC coefficients x 20 steps
#: (0.2 s at 100 steps per second), 5 consecutive 224 x 224 face crops (0.2 s at 25 fps), and each
#: stream's embedding size.
SYNCNET_MFCC_COEFFICIENTS = 13
SYNCNET_MFCC_STEPS = 20
SYNCNET_LIP_FRAMES = 5
SYNCNET_CROP = 224
SYNCNET_EMBEDDING = 1024
