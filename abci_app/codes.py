"""Result codes of the registry app: one IntEnum, never renumbered.

0 is success. Transaction codes are returned by CheckTx and FinalizeBlock
(``ExecTxResult.code``); query codes by Query. Codespace is always ``edgistry``.
"""

from __future__ import annotations

from enum import IntEnum

CODESPACE = "edgistry"


class Code(IntEnum):
    OK = 0
    # -- stateless (validate_basic) --
    MALFORMED_TX = 1  # not a canonical SignedTx/TxBody encoding
    TX_TOO_LARGE = 2
    BAD_SIGNATURE = 3
    INVALID_FIELD = 4  # a field out of range or badly formed
    NO_MESSAGE = 5  # TxBody (or a batch operation) carries no message
    BATCH_TOO_LARGE = 6  # a batch beyond MAX_BATCH_OPS operations
    # -- stateful --
    WRONG_CHAIN = 10
    UNKNOWN_SIGNER = 11
    STALE_NONCE = 12  # lower than the signer's last nonce
    NONCE_REUSED = 13  # equal to the signer's last nonce
    UNAUTHORIZED = 14  # signer may not send this message
    GATEWAY_EXISTS = 15
    GATEWAY_NOT_FOUND = 16
    GATEWAY_HAS_DEVICES = 17
    DEVICE_EXISTS = 18  # pseudonym already registered by another gateway
    DEVICE_NOT_FOUND = 19
    NOT_DEVICE_OWNER = 20
    ALREADY_EXPIRED = 21  # a revocation whose expiry is not after the block time
    FUTURE_LIVENESS = 22  # liveness claimed later than the block time
    LAST_VALIDATOR = 23  # removing it would leave no validator
    # -- the sealed registry (abci_app/sealing.py) --
    NO_DATA_KEY = 30  # a device sealed before any data key exists
    STALE_EPOCH = 31  # sealed or wrapped under an epoch that is not the one required
    WRAPS_INCOMPLETE = 32  # a new epoch not wrapped for every gateway with a seal key
    WRAP_EXISTS = 33  # the gateway already holds that epoch's key
    # -- queries --
    UNKNOWN_QUERY_PATH = 40
    BAD_QUERY = 41
    HEIGHT_UNAVAILABLE = 42
    NOT_FOUND = 43
    MOVED_TO_GATEWAYS = 44  # by-cell and by-service queries: the fields are sealed


class TxError(Exception):
    """A transaction is rejected: carries its code and a readable log line."""

    def __init__(self, code: Code, log: str) -> None:
        super().__init__(f"{code.name}: {log}")
        self.code = code
        self.log = log


class QueryError(TxError):
    """A query cannot be answered."""
