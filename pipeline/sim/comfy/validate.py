"""``POST /prompt`` validation, as ComfyUI 0.3.64 does it (pure: no I/O, no event loop).

The algorithm is ComfyUI's own, because clients meet its quirks: every node's class is checked
first (an unknown one is a graph-level ``invalid_prompt``); then each output node is validated
by walking its inputs recursively. Widget values are coerced *in place* (``"4"`` becomes 4,
so the queued graph is the coerced one), then checked against ``min``/``max`` and combo lists
(lists over 20 choices are not spelled out). A link is ``[node_id, slot]``: a wrong length is
``bad_linked_input``, a wrong type ``return_type_mismatch``, and a missing node raises a
``KeyError`` that the *downstream* node reports as ``exception_during_inner_validation``.
Errors are reported on the node that has them; nodes that are only invalid because an
upstream node is do not appear. With some outputs valid the prompt runs those (200 with
``node_errors``); with none, ``prompt_outputs_failed_validation`` (400).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from pipeline.sim.comfy.nodes import NodeClass

Reason = dict[str, Any]
Result = tuple[bool, list[Reason], str]


@dataclass(frozen=True, slots=True)
class Validation:
    ok: bool
    error: dict[str, Any] | None  # the top-level "error" of a 400
    outputs: list[str] = field(default_factory=list)  # the outputs that will run
    node_errors: dict[str, Any] = field(default_factory=dict)


def graph_error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def full_type_name(klass: type) -> str:
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def validate_node_input(received: Any, expected: Any) -> bool:
    """ComfyUI's type match: equal, ``*``, or overlapping comma-separated type lists."""
    if not received != expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def validate_prompt(prompt: dict[str, Any], classes: dict[str, NodeClass],
                    partial_targets: list[str] | None = None) -> Validation:
    """Validate (and coerce, in place) an API-format graph. Unexpected shapes (a prompt that
    is not a dict of dicts) raise, as they do in ComfyUI, and become a 500."""
    outputs: list[str] = []
    for node_id in prompt:
        node = prompt[node_id]
        if "class_type" not in node:
            return Validation(False, graph_error(
                "invalid_prompt", "Cannot execute because a node is missing the class_type "
                "property.", f"Node ID '#{node_id}'"))
        klass = classes.get(node["class_type"])
        if klass is None:
            return Validation(False, graph_error(
                "invalid_prompt", f"Cannot execute because node {node['class_type']} does not "
                "exist.", f"Node ID '#{node_id}'"))
        if klass.output_node and (partial_targets is None or node_id in partial_targets):
            outputs.append(node_id)
    if not outputs:
        return Validation(False, graph_error("prompt_no_outputs", "Prompt has no outputs"))

    good: list[str] = []
    failed: list[tuple[str, list[Reason]]] = []
    node_errors: dict[str, Any] = {}
    validated: dict[str, Result] = {}
    for output in outputs:
        try:
            valid, reasons, _ = _validate_inputs(prompt, classes, output, validated)
        except Exception as exc:
            valid = False
            reasons = [{"type": "exception_during_validation",
                        "message": "Exception when validating node", "details": str(exc),
                        "extra_info": {"exception_type": full_type_name(type(exc)),
                                       "traceback": traceback.format_tb(exc.__traceback__)}}]
            validated[output] = (False, reasons, output)
        if valid:
            good.append(output)
            continue
        failed.append((output, reasons))
        for node_id, (node_valid, node_reasons, _) in validated.items():
            if node_valid or not node_reasons:
                continue
            if node_id not in node_errors:
                node_errors[node_id] = {"errors": node_reasons, "dependent_outputs": [],
                                        "class_type": prompt[node_id]["class_type"]}
            node_errors[node_id]["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, rs in failed for r in rs)
        return Validation(False, graph_error("prompt_outputs_failed_validation",
                                             "Prompt outputs failed validation", details),
                          [], node_errors)
    return Validation(True, None, good, node_errors)


def _validate_inputs(prompt: dict[str, Any], classes: dict[str, NodeClass], node_id: Any,
                     validated: dict[str, Result]) -> Result:
    if node_id in validated:
        return validated[node_id]
    inputs = prompt[node_id]["inputs"]
    klass = classes[prompt[node_id]["class_type"]]
    errors: list[Reason] = []
    valid = True
    for name in klass.input_names():
        found = klass.input_info(name)
        assert found is not None
        input_type, category, extra = found
        if name not in inputs:
            if category == "required":
                errors.append({"type": "required_input_missing",
                               "message": "Required input is missing", "details": name,
                               "extra_info": {"input_name": name}})
            continue
        value = inputs[name]
        info = [input_type, extra]
        if isinstance(value, list):
            if len(value) != 2:
                errors.append({"type": "bad_linked_input",
                               "message": "Bad linked input, must be a length-2 list of "
                                          "[node_id, slot_index]",
                               "details": name,
                               "extra_info": {"input_name": name, "input_config": info,
                                              "received_value": value}})
                continue
            source = value[0]
            source_class = classes[prompt[source]["class_type"]]  # KeyError: missing node
            received = source_class.return_types[value[1]]
            if not validate_node_input(received, input_type):
                errors.append({"type": "return_type_mismatch",
                               "message": "Return type mismatch between linked nodes",
                               "details": f"{name}, received_type({received}) mismatch "
                                          f"input_type({input_type})",
                               "extra_info": {"input_name": name, "input_config": info,
                                              "received_type": received,
                                              "linked_node": value}})
                continue
            try:
                if _validate_inputs(prompt, classes, source, validated)[0] is False:
                    valid = False
            except Exception as exc:
                valid = False
                validated[source] = (False, [{
                    "type": "exception_during_inner_validation",
                    "message": "Exception when validating inner node", "details": str(exc),
                    "extra_info": {"input_name": name, "input_config": info,
                                   "exception_message": str(exc),
                                   "exception_type": full_type_name(type(exc)),
                                   "traceback": traceback.format_tb(exc.__traceback__),
                                   "linked_node": value}}], source)
            continue
        problem = _check_value(inputs, name, value, input_type, extra, info)
        if problem is not None:
            errors.append(problem)
    result: Result = (False, errors, node_id) if errors or not valid else (True, [], node_id)
    validated[node_id] = result
    return result


def _check_value(inputs: dict[str, Any], name: str, value: Any, input_type: Any,
                 extra: dict[str, Any], info: list[Any]) -> Reason | None:
    """Coerce a widget value in place and check it; the reason it is invalid, or None."""
    try:
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        convert = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(
            input_type if isinstance(input_type, str) else "")
        if convert is not None:
            value = inputs[name] = convert(value)
    except Exception as exc:
        return {"type": "invalid_input_type",
                "message": f"Failed to convert an input value to a {input_type} value",
                "details": f"{name}, {value}, {exc}",
                "extra_info": {"input_name": name, "input_config": info,
                               "received_value": value, "exception_message": str(exc)}}
    if "min" in extra and value < extra["min"]:
        return {"type": "value_smaller_than_min",
                "message": f"Value {value} smaller than min of {extra['min']}",
                "details": name, "extra_info": {"input_name": name, "input_config": info,
                                                "received_value": value}}
    if "max" in extra and value > extra["max"]:
        return {"type": "value_bigger_than_max",
                "message": f"Value {value} bigger than max of {extra['max']}",
                "details": name, "extra_info": {"input_name": name, "input_config": info,
                                                "received_value": value}}
    if isinstance(input_type, list) and value not in input_type:
        config: Any = info
        listed = str(input_type)
        if len(input_type) > 20:
            listed, config = f"(list of length {len(input_type)})", None
        return {"type": "value_not_in_list", "message": "Value not in list",
                "details": f"{name}: '{value}' not in {listed}",
                "extra_info": {"input_name": name, "input_config": config,
                               "received_value": value}}
    return None
