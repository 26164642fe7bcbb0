"""A Qwen-Omni checkpoint as three stages, each loading only its own part of the weights:

- `thinker.py`: the model's processor, audio and vision encoders and language model; streams text
  to the client and, per decode step, the hidden states the talker starts from;
- `talker.py`: turns those hidden states into codec tokens as they arrive;
- `code2wav.py`: decodes codec tokens into a waveform in chunks with left context.

`runtime.py` holds what they share: loading a part on its device and dtype, and sampling.
"""
