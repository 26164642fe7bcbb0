"""The OpenAI Realtime API over WebSocket (`/v1/realtime`): `protocol` (the events, as pydantic models;
GA names, and the beta ones clients still send), `session` (one conversation's state: its settings,
its input audio and turn detection)."""
