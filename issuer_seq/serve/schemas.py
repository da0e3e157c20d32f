"""Request and response models of the HTTP service (pydantic, strict, unknown fields refused).

Attempts follow the transaction log's contract (docs/data_contract.md), so a client sends the
same fields it logs. Every limit the scorer relies on (finite non-negative amounts, known
networks, card types and initiators, code formats, a bounded batch) is checked here, before
any model code runs: a bad request is a 4xx naming the field, never a 5xx.

No `from __future__ import annotations`: `request_models` builds classes inside a function,
and pydantic resolves their annotations eagerly from that scope.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from issuer_seq.rules import MAX_AMOUNT, Cause, cause_of
from issuer_seq.serve.inputs import retry_without_payment
from issuer_seq.timestamps import to_utc

# The contract's sets (issuer_seq.schema holds the same tuples; a test checks they agree).
Network = Literal["visa", "mastercard"]
CardType = Literal["debit", "credit", "prepaid"]
Initiator = Literal["CIT", "MIT"]

Timestamp = Annotated[
    datetime,
    BeforeValidator(to_utc),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number", "minimum": 0, "maximum": 4102444800},
            ],
            "description": "ISO 8601 (naive = UTC) or epoch seconds; 1970-01-01 .. 2100-01-01",
        }
    ),
]
Id = int | Annotated[str, Field(min_length=1, max_length=128)]
Amount = Annotated[
    float,
    # rules.MAX_AMOUNT, as the log contract: no card payment comes near it
    Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False, description="major units, finite, 0 .. 1e9"),
]
ResponseCode = Annotated[str, Field(pattern=r"^[0-9A-Z]{2}$", description="ISO 8583 field 39")]
AdviceCode = Annotated[str, Field(pattern=r"^[0-9]{2}$", description="Mastercard MAC")]
RouteName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="an acquirer connection (the log's `route`)",
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Attempt(Strict):
    """An authorization attempt about to be sent (the log's columns, without its outcome)."""

    ts: Timestamp
    card_id: Id
    issuer_id: Id
    merchant_id: Id
    network: Network
    card_type: CardType
    issuer_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    mcc: Annotated[str, Field(pattern=r"^[0-9]{4}$")]
    merchant_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    amount: Amount
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    initiator: Initiator
    is_recurring: bool
    three_ds: bool
    attempt: Annotated[int, Field(ge=1, le=1000)] = 1
    # The payment this attempt belongs to: the model marks the payment's earlier attempts in
    # the histories, so a retry (attempt > 1) must carry it.
    payment_id: Id | None = None
    # The acquirer connection the attempt is sent through (none: the log has one route).
    route: RouteName | None = None
    # Accepted so that log rows can be sent as they are; the scorer does not use them.
    txn_id: Id | None = None
    route_propensity: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _retry_has_payment(self) -> "Attempt":
        if self.payment_id is None and self.attempt > 1:
            raise ValueError(retry_without_payment(self.attempt))
        return self

    def as_mapping(self) -> dict[str, Any]:
        return self.model_dump(exclude={"txn_id", "route_propensity"})


class Outcome(Attempt):
    """An attempt with the issuer's answer: appended to the card's and issuer's histories."""

    response_code: ResponseCode
    advice_code: AdviceCode | None = None
    # required here: a later retry of the payment finds this attempt by it
    payment_id: Id


class Decline(Outcome):
    """A declined attempt to advise a retry for."""

    @model_validator(mode="after")
    def _is_a_decline(self) -> "Decline":
        if cause_of(self.response_code, self.network) == Cause.APPROVED:
            raise ValueError(
                f"response_code {self.response_code} is an approval: there is nothing to retry"
            )
        return self


class RouteCandidate(Strict):
    route: RouteName
    fee: Annotated[float, Field(ge=0, le=1_000, allow_inf_nan=False)] = Field(
        default=0.0, description="what sending one authorization through it costs"
    )


#: a merchant's candidate routes, in its static priority order (the fallback's choice first)
Candidates = Annotated[list[RouteCandidate], Field(min_length=1, max_length=16)]


def _distinct(routes: list[RouteCandidate] | None) -> None:
    names = [r.route for r in routes or []]
    if len(set(names)) < len(names):
        raise ValueError(f"routes must be distinct, got {names}")


class RetryRequest(Strict):
    decline: Decline
    routes: Candidates | None = Field(
        default=None,
        description="the routes a retry may take, in priority order; the answer names the "
        "one to retry on (none given: the decline's own route)",
    )

    @model_validator(mode="after")
    def _routes_distinct(self) -> "RetryRequest":
        _distinct(self.routes)
        return self


class RouteRequest(Strict):
    """An attempt about to be sent and the routes it may take, in the merchant's static
    priority order. The attempt's own `route`, if any, is ignored: each candidate is scored."""

    attempt: Attempt
    routes: Candidates

    @model_validator(mode="after")
    def _routes_distinct(self) -> "RouteRequest":
        _distinct(self.routes)
        return self


# -- responses ------------------------------------------------------------------------------
FallbackReason = Literal[
    "not_ready",
    "deadline",
    "overloaded",
    "state_unavailable",
    "model_error",
    "invalid_output",
    "unhandled_error",
]
Probability = Annotated[float, Field(ge=0, le=1)]


class Served(BaseModel):
    fallback: bool = Field(description="true: the answer came from rules, not the model")
    fallback_reason: FallbackReason | None = None
    model_version: str


class ScoreResponse(Served):
    p_approve: list[Probability] = Field(description="one per attempt, in request order")


class RetryResponse(Served):
    action: str = Field(description='a delay of the grid ("2d"), "now_with_3ds" or "no_retry"')
    delay_s: int | None = Field(description="seconds after the decline; null for no_retry")
    retry_at: datetime | None = Field(description="the decline's ts + delay_s")
    expected_value: float = Field(description="of the action, in the amount's currency")
    rule: str = Field(description="the network rule or policy reason that decided")
    curve: dict[str, Probability] = Field(description="delay -> P(retry approved)")
    allowed: dict[str, bool] = Field(description="delay -> allowed by the network rules")
    route: str | None = Field(
        default=None, description="the route to retry on (null: no retry, or one route)"
    )


class RankedRoute(BaseModel):
    route: str
    p_approve: Probability
    expected_value: float = Field(description="p_approve x amount x margin - fee")


class RouteResponse(Served):
    routes: list[RankedRoute] = Field(description="best expected value first")
    choice: str = Field(description="the route to send the attempt through")
    propensity: Probability = Field(description="the probability the policy chose `choice`")
    rule: Literal["expected_value", "exploration", "static_priority"] = Field(
        description="expected_value: the best route; exploration: drawn at random "
        "(route_epsilon > 0); static_priority: the first candidate (the fallback)"
    )


class OutcomesResponse(BaseModel):
    observed: int


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong, naming the field")
    detail: list[dict[str, Any]] | None = None


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool
    reason: str | None = None


# -- Open Inference Protocol (KServe V2) ------------------------------------------------------
V2Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class V2Tensor(Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=4)]
    datatype: V2Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="row-major, flat or nested as the shape")


class V2RequestedOutput(Strict):
    name: str
    parameters: dict[str, Any] | None = None


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dynamic dimension")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float]


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    outputs: list[V2OutputTensor]


class V2Error(BaseModel):
    error: str


class ScoreRequestBase(Strict):
    """One attempt (`attempt`) or a batch (`attempts`); exactly one of the two."""

    attempt: Attempt | None = None
    attempts: list[Attempt] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "ScoreRequestBase":
        if (self.attempt is None) == (self.attempts is None):
            raise ValueError("send exactly one of 'attempt' (one) or 'attempts' (a batch)")
        return self

    def items(self) -> list[Attempt]:
        return [self.attempt] if self.attempt is not None else list(self.attempts or [])


class OutcomesRequestBase(Strict):
    outcomes: list[Outcome]


class V2InferRequestBase(Strict):
    id: Annotated[str, Field(max_length=256)] | None = None
    parameters: dict[str, Any] | None = None
    inputs: Annotated[list[V2Tensor], Field(min_length=1, max_length=256)]
    outputs: Annotated[list[V2RequestedOutput], Field(max_length=8)] | None = None


@dataclass(frozen=True)
class RequestModels:
    """The request bodies whose size limits come from the configuration (max_batch)."""

    score: type[ScoreRequestBase]
    outcomes: type[OutcomesRequestBase]
    infer: type[V2InferRequestBase]


def request_models(max_batch: int) -> RequestModels:
    """Request models with the configured batch limit written into their JSON schema."""

    class ScoreRequest(ScoreRequestBase):
        __doc__ = ScoreRequestBase.__doc__
        attempts: Annotated[list[Attempt], Field(min_length=1, max_length=max_batch)] | None = None

    class OutcomesRequest(OutcomesRequestBase):
        outcomes: Annotated[list[Outcome], Field(min_length=1, max_length=max_batch)]

    class V2InferRequest(V2InferRequestBase):
        """An inference request of the Open Inference Protocol (KServe V2), JSON form."""

    return RequestModels(score=ScoreRequest, outcomes=OutcomesRequest, infer=V2InferRequest)
