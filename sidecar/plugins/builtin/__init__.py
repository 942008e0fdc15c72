"""Built-in plugins shipped with Sidecar: HTTP/TCP probes, disk and process checks, echo and sleep."""
