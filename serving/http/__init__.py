"""The web layer (FastAPI only): app factory, one router per protocol, body limits, auth, the
one error map."""
