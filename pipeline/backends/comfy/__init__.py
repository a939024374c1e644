"""ComfyUI backends: workflow templates, A1111 -> ComfyUI names, the client, preflight.

    workflow.py  load an API-format workflow, find or read its slots, fill them (pure)
    payload.py   a WebUI payload -> slot values and LoRA tags; refusals at load (pure)
    names.py     the documented A1111 -> ComfyUI name table and file-name matching (pure)
    protocol.py  what /prompt, /history and /queue answers mean; the errors they become (pure)
    reply.py     A1111-style info and infotexts from the filled values (pure)
    transport.py HTTP + websocket to one server: the one place foreign exceptions are mapped
    client.py    ComfyClient: the Backend protocol (submit, wait, fetch, label)
    inspect.py   preflight: BackendInfo from /object_info and /system_stats
"""

from pipeline.backends.comfy.client import ComfyClient, ComfySetup
from pipeline.backends.comfy.names import Catalog, NameRefused, Names
from pipeline.backends.comfy.protocol import (ExecutionFailed, Interrupted, PromptLost,
                                              WorkflowRejected)
from pipeline.backends.comfy.workflow import Template, default_workflow, fill, load_workflow

__all__ = ["Catalog", "ComfyClient", "ComfySetup", "ExecutionFailed", "Interrupted",
           "NameRefused", "Names", "PromptLost", "Template", "WorkflowRejected",
           "default_workflow", "fill", "load_workflow"]
