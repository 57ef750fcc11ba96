"""What moto (5.2) lacks and the deployment uses: CloudWatch Logs' saved query definitions, and
Batch's UpdateComputeEnvironment keeping the new compute resources.

install() adds PutQueryDefinition, DescribeQueryDefinitions and DeleteQueryDefinition to moto's
Logs responses, kept per account and region like moto's own state, so setup and teardown walk
the saved query as they do on AWS. The definitions live on moto's Logs backend, so moto's reset
clears them. moto's UpdateComputeEnvironment accepts computeResources and drops them (a TODO in
moto): install() stores what AWS stores (maxvCpus, subnets, security groups, min and desired
vCPUs), so an update of maxvCpus shows in DescribeComputeEnvironments. The tests install it in
process (conftest) and in moto_server (aws_helpers.MotoServer starts the server through this
module).
"""

from __future__ import annotations

import json
import sys
import uuid

from moto.batch.models import BatchBackend
from moto.logs.responses import LogsResponse


def _definitions(response: LogsResponse) -> dict[str, dict]:
    """Query id -> definition, for the request's account and region."""
    return response.logs_backend.__dict__.setdefault("query_definitions", {})


def put_query_definition(self: LogsResponse) -> str:
    definitions = _definitions(self)
    query_id = self._get_param("queryDefinitionId") or str(uuid.uuid4())
    definitions[query_id] = {
        "queryDefinitionId": query_id,
        "name": self._get_param("name"),
        "queryString": self._get_param("queryString"),
        "logGroupNames": self._get_param("logGroupNames") or [],
    }
    return json.dumps({"queryDefinitionId": query_id})


def describe_query_definitions(self: LogsResponse) -> str:
    prefix = self._get_param("queryDefinitionNamePrefix") or ""
    found = [d for d in _definitions(self).values() if d["name"].startswith(prefix)]
    return json.dumps({"queryDefinitions": found})


def delete_query_definition(self: LogsResponse) -> str:
    removed = _definitions(self).pop(self._get_param("queryDefinitionId"), None)
    return json.dumps({"success": removed is not None})


UPDATABLE_COMPUTE_RESOURCES = ("maxvCpus", "minvCpus", "desiredvCpus", "subnets",
                               "securityGroupIds")
_moto_update_compute_environment = BatchBackend.update_compute_environment


def update_compute_environment(self: BatchBackend, compute_environment_name: str, state,
                               compute_resources, service_role) -> tuple[str, str]:
    found = _moto_update_compute_environment(self, compute_environment_name, state,
                                             compute_resources, service_role)
    environment = self.get_compute_environment(compute_environment_name)
    for key in UPDATABLE_COMPUTE_RESOURCES:
        if key in (compute_resources or {}):
            environment.compute_resources[key] = compute_resources[key]
    return found


def install() -> None:
    BatchBackend.update_compute_environment = update_compute_environment
    LogsResponse.put_query_definition = put_query_definition
    LogsResponse.describe_query_definitions = describe_query_definitions
    LogsResponse.delete_query_definition = delete_query_definition


if __name__ == "__main__":  # moto_server with the gaps filled: python moto_gaps.py -H ... -p ...
    install()
    from moto.server import main

    main(sys.argv[1:])
