"""One router per protocol: Open Inference Protocol v2, imaging predict, OpenAI-compatible chat."""
