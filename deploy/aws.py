"""AWS calls: one client per service, throttling and IAM propagation retried with jittered backoff."""

from __future__ import annotations

import functools
import random
import re
import time
from collections.abc import Callable

import boto3
import botocore.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from deploy.settings import SettingsError


class AwsError(Exception):
    """An AWS call failed; the message names the resource it concerns."""



THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "RequestThrottled", "SlowDown",
})
THROTTLE_ATTEMPTS = 8
# IAM is eventually consistent: a role or policy just written can take a while to be seen by
# the service it is handed to. The Terraform AWS provider waits up to two minutes for this
# (its propagationTimeout, internal/service/iam); so do we, in jittered steps.
PROPAGATION_SECONDS = 120.0
sleep = time.sleep  # tests replace this to record the delays

# "User: arn:aws:sts::1:assumed-role/admin/me is not authorized to perform: iam:PassRole on
# resource: arn:aws:iam::1:role/x": the caller itself lacks a permission (IAM's own wording,
# whatever the service). Waiting does not grant it: such an error is never retried.
CALLER_LACKS = re.compile(r"User: (?P<caller>\S+) is not authorized to perform: "
                          r"(?P<action>[\w-]+:[\w*-]+)(?: on resource: (?P<resource>[^\s;]+))?")


def is_throttling(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in THROTTLING_CODES


def caller_lacks(err: ClientError) -> re.Match | None:
    """The permission the caller (the person running setup) lacks, named in the error."""
    return CALLER_LACKS.search(str(err.response.get("Error", {}).get("Message", "")))


def is_role_not_yet_usable(err: ClientError) -> bool:
    """The errors a service gives while a role it was just handed, or the policy just written
    to it, is still propagating through IAM; never the caller's own missing permission."""
    code = err.response.get("Error", {}).get("Code", "")
    message = err.response.get("Error", {}).get("Message", "")
    operation = err.operation_name
    if caller_lacks(err):
        return False
    if operation in ("CreateFunction", "UpdateFunctionConfiguration"):
        return code == "InvalidParameterValueException" and "cannot be assumed" in message
    if operation in ("CreateProject", "UpdateProject"):
        # "CodeBuild is not authorized to perform: sts:AssumeRole", and with vpcConfig, whose
        # EC2 permissions CodeBuild checks at once: "Not authorized to perform
        # DescribeSecurityGroups". The Terraform AWS provider retries "ot authorized to
        # perform" on CreateProject for both (internal/service/codebuild/project.go).
        return code == "InvalidInputException" and "ot authorized to perform" in message
    if operation in ("CreateStateMachine", "UpdateStateMachine"):
        # "Neither the global service principal states.amazonaws.com, nor the regional one is
        # authorized to assume the provided role"
        return code == "AccessDeniedException"
    if operation in ("CreateSchedule", "UpdateSchedule"):
        # Scheduler checks the new role's trust policy and can see an older version of it
        # (aws-sdk-js-v3 issue 6494): the same role passes a few seconds later.
        return code == "ValidationException" and "EventBridge Scheduler to assume" in message
    return False


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2**attempt)."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def with_aws_retries(call: Callable) -> Callable:
    """Retry throttling (a bounded number of times) and IAM propagation (for at most
    PROPAGATION_SECONDS of waiting in all) with jittered backoff; raise the rest."""

    @functools.wraps(call)
    def retrying(*args, **kwargs):
        throttled = propagating = 0
        waited = 0.0
        while True:
            try:
                return call(*args, **kwargs)
            except ClientError as err:
                if is_throttling(err) and throttled + 1 < THROTTLE_ATTEMPTS:
                    throttled += 1
                    sleep(backoff_delay(throttled, base=0.5, cap=20))
                elif is_role_not_yet_usable(err) and waited < PROPAGATION_SECONDS:
                    propagating += 1
                    delay = min(backoff_delay(propagating, base=2, cap=16),
                                PROPAGATION_SECONDS - waited)
                    sleep(delay)
                    waited += delay
                else:
                    raise

    return retrying


class RetryingClient:
    """A boto3 client whose API calls all go through with_aws_retries."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if name.startswith(("get_paginator", "get_waiter", "can_paginate")) or not callable(attr):
            return attr
        return with_aws_retries(attr)


# Only the aws partition: every ARN here is written arn:aws:..., every address ends in
# amazonaws.com, and the service principals, console links and the RDS CA bundle are those of
# the aws partition. China (aws-cn: arn:aws-cn:, amazonaws.com.cn) and GovCloud (aws-us-gov)
# differ in all of these, so they are refused rather than half supported.
PARTITION = "aws"


def check_region(session: boto3.Session, region: str) -> None:
    """A region name botocore knows, in the aws partition: a typo is a region error here, not
    a credential or connection error at the first call; a region of another partition is
    refused in one line that names it."""
    partitions = session.get_available_partitions()
    known = {name: partition for partition in partitions
             for name in session.get_available_regions("sts", partition_name=partition)}
    if region not in known:
        close = sorted(name for name in known if name.split("-")[0] == region.split("-")[0])
        hint = f" (known: {', '.join(close)})" if close else ""
        raise SettingsError(f"AWS region {region!r} is not a region AWS has{hint}")
    check_partition(known[region], f"AWS region {region}")


def check_partition(partition: str, what: str) -> None:
    if partition != PARTITION:
        raise SettingsError(f"{what} is in the {partition} partition: this deployment supports "
                            f"the {PARTITION} partition only (arn:{PARTITION}:, amazonaws.com)")


class Aws:
    """Clients for one account and region; the retry policy lives in with_aws_retries only."""

    def __init__(self, region: str = ""):
        self._clients: dict[str, RetryingClient] = {}
        try:
            self.session = boto3.Session(region_name=region or None)
            self.region = self.session.region_name
            if not self.region:
                raise SettingsError(
                    "no AWS region: set region in the config, --region or AWS_REGION")
            check_region(self.session, self.region)
            identity = self.client("sts").get_caller_identity()
            self.account = identity["Account"]
            # the caller's ARN carries its partition: credentials of another partition fail
            # here in one line, not at the first ARN IAM refuses
            check_partition(identity["Arn"].split(":")[1], f"the AWS account {self.account}")
        except EndpointConnectionError as err:  # a region error, not one of the account's
            raise AwsError(f"AWS region {self.region}: {describe_error(err)}") from err
        except (ClientError, BotoCoreError) as err:
            raise AwsError(f"AWS account: {describe_error(err)}") from err

    def client(self, service: str) -> RetryingClient:
        if service not in self._clients:
            config = Config(retries={"mode": "standard", "total_max_attempts": 1})
            self._clients[service] = RetryingClient(self.session.client(service, config=config))
        return self._clients[service]

    def arn(self, service: str, resource: str, region: bool = True) -> str:
        return f"arn:{PARTITION}:{service}:{self.region if region else ''}:{self.account}:{resource}"


# What to do about the errors of the credentials, the network and the caller's permissions.
CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError,
                     ProfileNotFound)
NETWORK_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                  botocore.exceptions.ConnectionClosedError)
CREDENTIALS_ADVICE = ("set AWS_PROFILE (aws sso login), or AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY, then run again")
ADVICE_BY_CODE = {
    **dict.fromkeys(("ExpiredToken", "ExpiredTokenException", "RequestExpired"),
                    "the AWS credentials have expired: renew them (aws sso login) and run again"),
    **dict.fromkeys(("InvalidClientTokenId", "UnrecognizedClientException",
                     "SignatureDoesNotMatch", "AuthFailure", "InvalidAccessKeyId"),
                    "the AWS credentials are not valid: " + CREDENTIALS_ADVICE),
    **dict.fromkeys(("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"),
                    "the AWS credentials lack this permission: docs/aws.md, Permissions for the "
                    "person running setup"),
}


def describe_error(err: Exception) -> str:
    """One line: the API operation, the error code and its message, and what to do when the
    credentials, the network or the caller's permissions are the cause."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        message = " ".join(str(error.get("Message", "")).split())
        if message.startswith("<"):  # an HTML error page, not an AWS error
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = f"HTTP {status} without error details"
        code = error.get("Code", "?")
        advice = ADVICE_BY_CODE.get(code)
        lacks = caller_lacks(err)
        if lacks:  # any code: CodeBuild and Lambda word it as theirs, not AccessDenied
            on = f" on {lacks['resource']}" if lacks["resource"] else ""
            advice = (f"the AWS credentials running this ({lacks['caller']}) lack "
                      f"{lacks['action']}{on}: docs/aws.md, Permissions for the person running "
                      "setup")
        return f"{err.operation_name}: {code}: {message[:300]}" + (f"; {advice}" if advice else "")
    text = " ".join(str(err).split())[:300] or type(err).__name__
    if isinstance(err, CREDENTIAL_ERRORS):
        return f"{text}: {CREDENTIALS_ADVICE}"
    if isinstance(err, NoRegionError):
        return f"{text}: set region in the config, --region or AWS_REGION"
    if isinstance(err, NETWORK_ERRORS):
        return f"{text}: check the network, the region and AWS_ENDPOINT_URL, then run again"
    return text


def error_code(err: ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")
