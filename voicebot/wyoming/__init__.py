"""Wyoming: voicebot's speech recognition, TTS and LLM served to Home Assistant and other voicebots."""
