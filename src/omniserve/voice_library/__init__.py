"""The custom voice library: consents and the voices made under them (OpenAI's custom voices)."""
