"""HTTP: the Starlette app served by uvicorn in the service's own event loop."""
