"""OpenAPI links between the jobs API's operations (deploy -> run -> status), so that a reader, and a stateful
fuzzer, can follow a function to its jobs and a job to its state. A drf-spectacular postprocessing hook."""
from typing import Any

FUNCTION = "$response.body#/functionId"
JOB = "$response.body#/jobId"

FUNCTION_LINKS = {
    "ShowFunction": {"operationId": "functions_retrieve", "parameters": {"id": FUNCTION}},
    "ChangeFunction": {"operationId": "functions_partial_update", "parameters": {"id": FUNCTION}},
    "DeleteFunction": {"operationId": "functions_destroy", "parameters": {"id": FUNCTION}},
    "RunFunction": {"operationId": "run", "requestBody": {"functionId": FUNCTION}},
    "RunFunctionAsJob": {"operationId": "jobs_create", "requestBody": {"functionId": FUNCTION}},
}
JOB_LINKS = {
    "Status": {"operationId": "status", "parameters": {"job_id": JOB}},
    "ShowJob": {"operationId": "jobs_retrieve", "parameters": {"id": JOB}},
    "CancelJob": {"operationId": "jobs_cancel", "parameters": {"id": JOB}},
}
# operationId -> {status: links}
LINKS: dict[str, dict[str, dict[str, Any]]] = {
    "functions_create": {"201": FUNCTION_LINKS},
    "deploy": {"201": FUNCTION_LINKS},
    "run": {"200": JOB_LINKS, "202": JOB_LINKS},
    "jobs_create": {"200": JOB_LINKS, "202": JOB_LINKS},
}


def add_links(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    for item in result["paths"].values():
        for operation in item.values():
            for status, links in LINKS.get(operation.get("operationId"), {}).items():
                if status in operation["responses"]:
                    operation["responses"][status]["links"] = links
    return result
