"""Type to it: the OpenAI-compatible API and the web chat page, on the assistant's one model."""
