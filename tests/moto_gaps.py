"""What moto (5.2) lacks and the deployment uses: CloudWatch Logs' saved query definitions,
Batch's UpdateComputeEnvironment keeping the new compute resources, the Step Functions engine's
states:startExecution tasks, and CodeBuild's concurrent-build quotas in Service Quotas.

install() adds PutQueryDefinition, DescribeQueryDefinitions and DeleteQueryDefinition to moto's
Logs responses, kept per account and region like moto's own state, so setup and teardown walk
the saved query as they do on AWS. The definitions live on moto's Logs backend, so moto's reset
clears them. moto's UpdateComputeEnvironment accepts computeResources and drops them (a TODO in
moto): install() stores what AWS stores (maxvCpus, subnets, security groups, min and desired
vCPUs), so an update of maxvCpus shows in DescribeComputeEnvironments. moto's engine hands a
states:startExecution task's parameters (StateMachineArn, Name, Input) to boto3 as they are
written, which boto3 refuses, and keeps the answer's StartDate a datetime, which its
DescribeExecution cannot serialise: install() passes the parameters by boto3's names and
answers as the integration does (PascalCase names, dates as text); and StartExecution copies
the state machine with its backend, which fails ("cannot pickle '_thread.RLock'") while another
execution runs in it: install() keeps the backend and the executions shared in that copy. So
the starter and a startExecution.sync:2 (the Transform step) run in the engine. moto's Service
Quotas knows only the vpc service and has no ListServiceQuotas: install() adds CodeBuild's
concurrent-build quotas (by the names of the CodeBuild quotas page; the defaults 20, which that
page gives "for some platforms and compute types") to ListAWSDefaultServiceQuotas, and
ListServiceQuotas with the values a test applies (applied_codebuild_quotas); AWS lists there
only quotas whose applied value it knows, so by default it lists none. The tests install it in
process (conftest) and in moto_server (aws_helpers.MotoServer starts the server through this
module).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import sys
import uuid
import zlib

from moto.batch.models import BatchBackend
from moto.core import DEFAULT_ACCOUNT_ID
from moto.logs.responses import LogsResponse
from moto.servicequotas.models import ServiceQuotasBackend, servicequotas_backends
from moto.servicequotas.responses import ServiceQuotasResponse
from moto.stepfunctions.models import StateMachine
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    state_task_service_sfn,
)


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


_StateTaskServiceSfn = state_task_service_sfn.StateTaskServiceSfn
_moto_normalise_sfn_parameters = _StateTaskServiceSfn._normalise_parameters


def normalise_sfn_parameters(self, parameters: dict, boto_service_name=None,
                             service_action_name=None) -> None:
    _moto_normalise_sfn_parameters(self, parameters, boto_service_name, service_action_name)
    for key in [k for k in parameters if k[:1].isupper()]:
        parameters[key[0].lower() + key[1:]] = parameters.pop(key)


def normalise_sfn_response(self, response, boto_service_name=None,
                           service_action_name=None) -> None:
    """As the states integrations answer: PascalCase names (ExecutionArn, Status; moto's own
    .sync resolvers read "ExecutionArn") and dates as text; the child's Input and Output,
    JSON of its own, untouched."""
    if isinstance(response, dict):
        for key in list(response):
            value = response.pop(key)
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            elif isinstance(value, dict) and key not in ("input", "output"):
                normalise_sfn_response(self, value)
            response[key[:1].upper() + key[1:]] = value


CODEBUILD_SIZES = ("Small", "Medium", "Large", "XLarge", "2XLarge")
CODEBUILD_DEFAULT_BUILDS = 20.0


def codebuild_quota(size: str, value: float) -> dict:
    name = f"Concurrently running builds for Linux/{size} environment"
    code = f"L-{zlib.crc32(name.encode()):08X}"  # made up: setup finds the quotas by name
    return {"ServiceCode": "codebuild", "ServiceName": "AWS CodeBuild", "QuotaCode": code,
            "QuotaArn": f"arn:aws:servicequotas:::codebuild/{code}", "QuotaName": name,
            "Value": value, "Unit": "None", "Adjustable": True, "GlobalQuota": False}


def applied_codebuild_quotas(account: str = DEFAULT_ACCOUNT_ID,
                             region: str = "us-east-1") -> dict[str, float]:
    """Quota name -> the value applied to the account, for a test to set (in process)."""
    backend = servicequotas_backends[account][region]
    return backend.__dict__.setdefault("applied_codebuild_quotas", {})


_moto_default_quotas = ServiceQuotasBackend.list_aws_default_service_quotas


def list_aws_default_service_quotas(self: ServiceQuotasBackend, service_code: str) -> list[dict]:
    if service_code == "codebuild":
        return [codebuild_quota(size, CODEBUILD_DEFAULT_BUILDS) for size in CODEBUILD_SIZES]
    return _moto_default_quotas(self, service_code)


def list_service_quotas(self: ServiceQuotasResponse) -> str:
    service_code = json.loads(self.body).get("ServiceCode")
    applied = applied_codebuild_quotas(self.current_account, self.region)
    quotas = [codebuild_quota(size, 0.0) for size in CODEBUILD_SIZES]
    if service_code != "codebuild":
        quotas = []
    return json.dumps({"Quotas": [{**quota, "Value": applied[quota["QuotaName"]]}
                                  for quota in quotas if quota["QuotaName"] in applied]})


SHARED_IN_COPIES = ("backend", "executions")


def copy_state_machine(self: StateMachine, memo: dict) -> StateMachine:
    """The copy StartExecution makes of the definition and settings, sharing what is live."""
    clone = copy.copy(self)
    for key, value in vars(self).items():
        if key not in SHARED_IN_COPIES:
            setattr(clone, key, copy.deepcopy(value, memo))
    return clone


def install() -> None:
    BatchBackend.update_compute_environment = update_compute_environment
    _StateTaskServiceSfn._normalise_parameters = normalise_sfn_parameters
    _StateTaskServiceSfn._normalise_response = normalise_sfn_response
    LogsResponse.put_query_definition = put_query_definition
    LogsResponse.describe_query_definitions = describe_query_definitions
    LogsResponse.delete_query_definition = delete_query_definition
    ServiceQuotasBackend.list_aws_default_service_quotas = list_aws_default_service_quotas
    ServiceQuotasResponse.list_service_quotas = list_service_quotas
    StateMachine.__deepcopy__ = copy_state_machine


if __name__ == "__main__":  # moto_server with the gaps filled: python moto_gaps.py -H ... -p ...
    install()
    from moto.server import main

    main(sys.argv[1:])
