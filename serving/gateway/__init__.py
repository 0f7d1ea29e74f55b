"""The request path without HTTP: resolve a model, admit by priority, route canary traffic,
retry, audit."""
