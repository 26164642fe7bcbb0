"""A Qwen-Omni checkpoint as three stages, each loading only its own part of the weights:

- `thinker.py` (both families): the model's processor, audio and vision encoders and language model;
  streams text to the client and, per decode step, the states the talker starts from;
- `talker.py` (Qwen2.5-Omni), `qwen3_talker.py` (Qwen3-Omni, with its code predictor): turn those
  states into codec tokens as they arrive;
- `code2wav.py` (Qwen2.5-Omni's token2wav), `qwen3_code2wav.py`: decode codec tokens into a waveform
  in chunks with left context.

`runtime.py` holds what they share: loading a part on its device and dtype, and sampling.
"""
