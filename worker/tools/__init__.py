"""Tools (function calling) on the worker: the request's plan (`plan`), the constraint
that makes a required call valid (`constraint`), and the stream parser that turns decoded
calls into tool-call pieces (`parser`, `stream`). The prompt that shows the tools is the
engines' (worker.engines.tool_prompt): chat templates render it."""
