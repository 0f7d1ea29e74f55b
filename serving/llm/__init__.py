"""The clinical LLM: manifest schema, checkpoint build, chat layer and the engines."""
