"""The OpenAI-compatible HTTP front of the router (/v1/chat/completions, /v1/completions,
/v1/models), served in the router's process: `server` runs it with uvicorn, `app` holds
the endpoints (which call the router in process), `translate` turns OpenAI bodies into
the router's requests, `responses` the router's events into OpenAI objects and chunks,
and `errors` keeps OpenAI's error shape."""
