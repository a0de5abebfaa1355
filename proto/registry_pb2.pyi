from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedTx(_message.Message):
    __slots__ = ("body", "signer", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signer: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signer: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class TxBody(_message.Message):
    __slots__ = ("chain_id", "nonce", "register_gateway", "update_gateway", "remove_gateway", "register_device", "update_device", "unregister_device", "revoke_token", "report_liveness", "set_validator", "set_seal_key", "put_data_key", "set_gateway_tls", "batch", "put_manifest")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    REGISTER_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    REMOVE_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    REGISTER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    UNREGISTER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPORT_LIVENESS_FIELD_NUMBER: _ClassVar[int]
    SET_VALIDATOR_FIELD_NUMBER: _ClassVar[int]
    SET_SEAL_KEY_FIELD_NUMBER: _ClassVar[int]
    PUT_DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    SET_GATEWAY_TLS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PUT_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    chain_id: str
    nonce: int
    register_gateway: RegisterGateway
    update_gateway: UpdateGateway
    remove_gateway: RemoveGateway
    register_device: RegisterDevice
    update_device: UpdateDevice
    unregister_device: UnregisterDevice
    revoke_token: RevokeToken
    report_liveness: ReportLiveness
    set_validator: SetValidator
    set_seal_key: SetSealKey
    put_data_key: PutDataKey
    set_gateway_tls: SetGatewayTls
    batch: Batch
    put_manifest: PutManifest
    def __init__(self, chain_id: _Optional[str] = ..., nonce: _Optional[int] = ..., register_gateway: _Optional[_Union[RegisterGateway, _Mapping]] = ..., update_gateway: _Optional[_Union[UpdateGateway, _Mapping]] = ..., remove_gateway: _Optional[_Union[RemoveGateway, _Mapping]] = ..., register_device: _Optional[_Union[RegisterDevice, _Mapping]] = ..., update_device: _Optional[_Union[UpdateDevice, _Mapping]] = ..., unregister_device: _Optional[_Union[UnregisterDevice, _Mapping]] = ..., revoke_token: _Optional[_Union[RevokeToken, _Mapping]] = ..., report_liveness: _Optional[_Union[ReportLiveness, _Mapping]] = ..., set_validator: _Optional[_Union[SetValidator, _Mapping]] = ..., set_seal_key: _Optional[_Union[SetSealKey, _Mapping]] = ..., put_data_key: _Optional[_Union[PutDataKey, _Mapping]] = ..., set_gateway_tls: _Optional[_Union[SetGatewayTls, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., put_manifest: _Optional[_Union[PutManifest, _Mapping]] = ...) -> None: ...

class BatchOp(_message.Message):
    __slots__ = ("update_gateway", "register_device", "update_device", "unregister_device", "revoke_token", "report_liveness", "set_seal_key", "set_gateway_tls", "put_manifest")
    UPDATE_GATEWAY_FIELD_NUMBER: _ClassVar[int]
    REGISTER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    UNREGISTER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPORT_LIVENESS_FIELD_NUMBER: _ClassVar[int]
    SET_SEAL_KEY_FIELD_NUMBER: _ClassVar[int]
    SET_GATEWAY_TLS_FIELD_NUMBER: _ClassVar[int]
    PUT_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    update_gateway: UpdateGateway
    register_device: RegisterDevice
    update_device: UpdateDevice
    unregister_device: UnregisterDevice
    revoke_token: RevokeToken
    report_liveness: ReportLiveness
    set_seal_key: SetSealKey
    set_gateway_tls: SetGatewayTls
    put_manifest: PutManifest
    def __init__(self, update_gateway: _Optional[_Union[UpdateGateway, _Mapping]] = ..., register_device: _Optional[_Union[RegisterDevice, _Mapping]] = ..., update_device: _Optional[_Union[UpdateDevice, _Mapping]] = ..., unregister_device: _Optional[_Union[UnregisterDevice, _Mapping]] = ..., revoke_token: _Optional[_Union[RevokeToken, _Mapping]] = ..., report_liveness: _Optional[_Union[ReportLiveness, _Mapping]] = ..., set_seal_key: _Optional[_Union[SetSealKey, _Mapping]] = ..., set_gateway_tls: _Optional[_Union[SetGatewayTls, _Mapping]] = ..., put_manifest: _Optional[_Union[PutManifest, _Mapping]] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[BatchOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[BatchOp, _Mapping]]] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("codes", "data")
    CODES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    codes: _containers.RepeatedScalarFieldContainer[int]
    data: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, codes: _Optional[_Iterable[int]] = ..., data: _Optional[_Iterable[bytes]] = ...) -> None: ...

class RegisterGateway(_message.Message):
    __slots__ = ("pubkey", "endpoint", "operator")
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    pubkey: bytes
    endpoint: str
    operator: str
    def __init__(self, pubkey: _Optional[bytes] = ..., endpoint: _Optional[str] = ..., operator: _Optional[str] = ...) -> None: ...

class UpdateGateway(_message.Message):
    __slots__ = ("endpoint", "operator")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    operator: str
    def __init__(self, endpoint: _Optional[str] = ..., operator: _Optional[str] = ...) -> None: ...

class SetGatewayTls(_message.Message):
    __slots__ = ("cert", "cert_signature", "peer_endpoint")
    CERT_FIELD_NUMBER: _ClassVar[int]
    CERT_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PEER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    cert: bytes
    cert_signature: bytes
    peer_endpoint: str
    def __init__(self, cert: _Optional[bytes] = ..., cert_signature: _Optional[bytes] = ..., peer_endpoint: _Optional[str] = ...) -> None: ...

class RemoveGateway(_message.Message):
    __slots__ = ("gateway_id",)
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    def __init__(self, gateway_id: _Optional[str] = ...) -> None: ...

class ServiceMethod(_message.Message):
    __slots__ = ("name", "cache_max_age_s", "mutating")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CACHE_MAX_AGE_S_FIELD_NUMBER: _ClassVar[int]
    MUTATING_FIELD_NUMBER: _ClassVar[int]
    name: str
    cache_max_age_s: int
    mutating: bool
    def __init__(self, name: _Optional[str] = ..., cache_max_age_s: _Optional[int] = ..., mutating: _Optional[bool] = ...) -> None: ...

class ServiceDescriptor(_message.Message):
    __slots__ = ("type", "methods")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    type: str
    methods: _containers.RepeatedCompositeFieldContainer[ServiceMethod]
    def __init__(self, type: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[ServiceMethod, _Mapping]]] = ...) -> None: ...

class PrivacyPolicy(_message.Message):
    __slots__ = ("resolution", "k")
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    resolution: int
    k: int
    def __init__(self, resolution: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class RegisterDevice(_message.Message):
    __slots__ = ("pseudonym", "services", "cell", "policy", "duty_cycle_s", "sealed")
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DUTY_CYCLE_S_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    pseudonym: bytes
    services: _containers.RepeatedCompositeFieldContainer[ServiceDescriptor]
    cell: int
    policy: PrivacyPolicy
    duty_cycle_s: int
    sealed: Sealed
    def __init__(self, pseudonym: _Optional[bytes] = ..., services: _Optional[_Iterable[_Union[ServiceDescriptor, _Mapping]]] = ..., cell: _Optional[int] = ..., policy: _Optional[_Union[PrivacyPolicy, _Mapping]] = ..., duty_cycle_s: _Optional[int] = ..., sealed: _Optional[_Union[Sealed, _Mapping]] = ...) -> None: ...

class UpdateDevice(_message.Message):
    __slots__ = ("pseudonym", "services", "cell", "policy", "duty_cycle_s", "sealed")
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DUTY_CYCLE_S_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    pseudonym: bytes
    services: _containers.RepeatedCompositeFieldContainer[ServiceDescriptor]
    cell: int
    policy: PrivacyPolicy
    duty_cycle_s: int
    sealed: Sealed
    def __init__(self, pseudonym: _Optional[bytes] = ..., services: _Optional[_Iterable[_Union[ServiceDescriptor, _Mapping]]] = ..., cell: _Optional[int] = ..., policy: _Optional[_Union[PrivacyPolicy, _Mapping]] = ..., duty_cycle_s: _Optional[int] = ..., sealed: _Optional[_Union[Sealed, _Mapping]] = ...) -> None: ...

class UnregisterDevice(_message.Message):
    __slots__ = ("pseudonym",)
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    pseudonym: bytes
    def __init__(self, pseudonym: _Optional[bytes] = ...) -> None: ...

class RevokeToken(_message.Message):
    __slots__ = ("tag", "expires_at", "tag_hash")
    TAG_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TAG_HASH_FIELD_NUMBER: _ClassVar[int]
    tag: bytes
    expires_at: int
    tag_hash: bytes
    def __init__(self, tag: _Optional[bytes] = ..., expires_at: _Optional[int] = ..., tag_hash: _Optional[bytes] = ...) -> None: ...

class LivenessEntry(_message.Message):
    __slots__ = ("pseudonym", "last_seen")
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    pseudonym: bytes
    last_seen: int
    def __init__(self, pseudonym: _Optional[bytes] = ..., last_seen: _Optional[int] = ...) -> None: ...

class ReportLiveness(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LivenessEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[LivenessEntry, _Mapping]]] = ...) -> None: ...

class SetValidator(_message.Message):
    __slots__ = ("pubkey", "power")
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    pubkey: bytes
    power: int
    def __init__(self, pubkey: _Optional[bytes] = ..., power: _Optional[int] = ...) -> None: ...

class Sealed(_message.Message):
    __slots__ = ("epoch", "nonce", "ciphertext")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    nonce: bytes
    ciphertext: bytes
    def __init__(self, epoch: _Optional[int] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class DeviceFields(_message.Message):
    __slots__ = ("services", "cell", "policy", "duty_cycle_s", "manifest")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DUTY_CYCLE_S_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceDescriptor]
    cell: int
    policy: PrivacyPolicy
    duty_cycle_s: int
    manifest: int
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceDescriptor, _Mapping]]] = ..., cell: _Optional[int] = ..., policy: _Optional[_Union[PrivacyPolicy, _Mapping]] = ..., duty_cycle_s: _Optional[int] = ..., manifest: _Optional[int] = ...) -> None: ...

class PutManifest(_message.Message):
    __slots__ = ("slot", "sealed")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    slot: int
    sealed: Sealed
    def __init__(self, slot: _Optional[int] = ..., sealed: _Optional[_Union[Sealed, _Mapping]] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceDescriptor]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceDescriptor, _Mapping]]] = ...) -> None: ...

class ManifestRecord(_message.Message):
    __slots__ = ("gateway_id", "slot", "sealed", "height")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    slot: int
    sealed: Sealed
    height: int
    def __init__(self, gateway_id: _Optional[str] = ..., slot: _Optional[int] = ..., sealed: _Optional[_Union[Sealed, _Mapping]] = ..., height: _Optional[int] = ...) -> None: ...

class ManifestList(_message.Message):
    __slots__ = ("manifests", "next")
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    manifests: _containers.RepeatedCompositeFieldContainer[ManifestRecord]
    next: bytes
    def __init__(self, manifests: _Optional[_Iterable[_Union[ManifestRecord, _Mapping]]] = ..., next: _Optional[bytes] = ...) -> None: ...

class KeyWrap(_message.Message):
    __slots__ = ("gateway_id", "epoch", "ephemeral", "nonce", "ciphertext")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    epoch: int
    ephemeral: bytes
    nonce: bytes
    ciphertext: bytes
    def __init__(self, gateway_id: _Optional[str] = ..., epoch: _Optional[int] = ..., ephemeral: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SetSealKey(_message.Message):
    __slots__ = ("x25519_pubkey",)
    X25519_PUBKEY_FIELD_NUMBER: _ClassVar[int]
    x25519_pubkey: bytes
    def __init__(self, x25519_pubkey: _Optional[bytes] = ...) -> None: ...

class PutDataKey(_message.Message):
    __slots__ = ("epoch", "key_check", "wraps")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KEY_CHECK_FIELD_NUMBER: _ClassVar[int]
    WRAPS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    key_check: bytes
    wraps: _containers.RepeatedCompositeFieldContainer[KeyWrap]
    def __init__(self, epoch: _Optional[int] = ..., key_check: _Optional[bytes] = ..., wraps: _Optional[_Iterable[_Union[KeyWrap, _Mapping]]] = ...) -> None: ...

class GatewayRecord(_message.Message):
    __slots__ = ("id", "pubkey", "endpoint", "operator", "registered_height", "seal_pubkey", "tls_cert", "tls_cert_signature", "peer_endpoint")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEAL_PUBKEY_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PEER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    pubkey: bytes
    endpoint: str
    operator: str
    registered_height: int
    seal_pubkey: bytes
    tls_cert: bytes
    tls_cert_signature: bytes
    peer_endpoint: str
    def __init__(self, id: _Optional[str] = ..., pubkey: _Optional[bytes] = ..., endpoint: _Optional[str] = ..., operator: _Optional[str] = ..., registered_height: _Optional[int] = ..., seal_pubkey: _Optional[bytes] = ..., tls_cert: _Optional[bytes] = ..., tls_cert_signature: _Optional[bytes] = ..., peer_endpoint: _Optional[str] = ...) -> None: ...

class DeviceRecord(_message.Message):
    __slots__ = ("pseudonym", "gateway_id", "services", "cell", "policy", "duty_cycle_s", "last_seen", "registered_height", "sealed")
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DUTY_CYCLE_S_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    pseudonym: bytes
    gateway_id: str
    services: _containers.RepeatedCompositeFieldContainer[ServiceDescriptor]
    cell: int
    policy: PrivacyPolicy
    duty_cycle_s: int
    last_seen: int
    registered_height: int
    sealed: Sealed
    def __init__(self, pseudonym: _Optional[bytes] = ..., gateway_id: _Optional[str] = ..., services: _Optional[_Iterable[_Union[ServiceDescriptor, _Mapping]]] = ..., cell: _Optional[int] = ..., policy: _Optional[_Union[PrivacyPolicy, _Mapping]] = ..., duty_cycle_s: _Optional[int] = ..., last_seen: _Optional[int] = ..., registered_height: _Optional[int] = ..., sealed: _Optional[_Union[Sealed, _Mapping]] = ...) -> None: ...

class RevocationRecord(_message.Message):
    __slots__ = ("tag", "expires_at", "tag_hash")
    TAG_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TAG_HASH_FIELD_NUMBER: _ClassVar[int]
    tag: bytes
    expires_at: int
    tag_hash: bytes
    def __init__(self, tag: _Optional[bytes] = ..., expires_at: _Optional[int] = ..., tag_hash: _Optional[bytes] = ...) -> None: ...

class ValidatorRecord(_message.Message):
    __slots__ = ("pubkey", "power")
    PUBKEY_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    pubkey: bytes
    power: int
    def __init__(self, pubkey: _Optional[bytes] = ..., power: _Optional[int] = ...) -> None: ...

class DeviceQuery(_message.Message):
    __slots__ = ("service_type", "cell", "gateway_id", "pseudonym", "start_after", "limit", "slot")
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    service_type: str
    cell: int
    gateway_id: str
    pseudonym: bytes
    start_after: bytes
    limit: int
    slot: int
    def __init__(self, service_type: _Optional[str] = ..., cell: _Optional[int] = ..., gateway_id: _Optional[str] = ..., pseudonym: _Optional[bytes] = ..., start_after: _Optional[bytes] = ..., limit: _Optional[int] = ..., slot: _Optional[int] = ...) -> None: ...

class GatewayList(_message.Message):
    __slots__ = ("gateways",)
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    gateways: _containers.RepeatedCompositeFieldContainer[GatewayRecord]
    def __init__(self, gateways: _Optional[_Iterable[_Union[GatewayRecord, _Mapping]]] = ...) -> None: ...

class DeviceList(_message.Message):
    __slots__ = ("devices", "next")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceRecord]
    next: bytes
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceRecord, _Mapping]]] = ..., next: _Optional[bytes] = ...) -> None: ...

class RevocationList(_message.Message):
    __slots__ = ("revocations", "next")
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[RevocationRecord]
    next: bytes
    def __init__(self, revocations: _Optional[_Iterable[_Union[RevocationRecord, _Mapping]]] = ..., next: _Optional[bytes] = ...) -> None: ...

class NodeSummary(_message.Message):
    __slots__ = ("height", "app_hash", "gateways", "chain_id", "oldest_height", "manifest_ref_height")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    APP_HASH_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    OLDEST_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_REF_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    height: int
    app_hash: bytes
    gateways: int
    chain_id: str
    oldest_height: int
    manifest_ref_height: int
    def __init__(self, height: _Optional[int] = ..., app_hash: _Optional[bytes] = ..., gateways: _Optional[int] = ..., chain_id: _Optional[str] = ..., oldest_height: _Optional[int] = ..., manifest_ref_height: _Optional[int] = ...) -> None: ...

class KeyList(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DataKeyEpoch(_message.Message):
    __slots__ = ("epoch", "key_check", "height", "opened_by")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KEY_CHECK_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    OPENED_BY_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    key_check: bytes
    height: int
    opened_by: str
    def __init__(self, epoch: _Optional[int] = ..., key_check: _Optional[bytes] = ..., height: _Optional[int] = ..., opened_by: _Optional[str] = ...) -> None: ...

class SealState(_message.Message):
    __slots__ = ("current_epoch", "rotation_due", "epochs", "wraps")
    CURRENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ROTATION_DUE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    WRAPS_FIELD_NUMBER: _ClassVar[int]
    current_epoch: int
    rotation_due: bool
    epochs: _containers.RepeatedCompositeFieldContainer[DataKeyEpoch]
    wraps: _containers.RepeatedCompositeFieldContainer[KeyWrap]
    def __init__(self, current_epoch: _Optional[int] = ..., rotation_due: _Optional[bool] = ..., epochs: _Optional[_Iterable[_Union[DataKeyEpoch, _Mapping]]] = ..., wraps: _Optional[_Iterable[_Union[KeyWrap, _Mapping]]] = ...) -> None: ...

class StoredBlock(_message.Message):
    __slots__ = ("height", "time_ns", "txs", "hash", "finalize_response")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    TXS_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    FINALIZE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    height: int
    time_ns: int
    txs: _containers.RepeatedScalarFieldContainer[bytes]
    hash: bytes
    finalize_response: bytes
    def __init__(self, height: _Optional[int] = ..., time_ns: _Optional[int] = ..., txs: _Optional[_Iterable[bytes]] = ..., hash: _Optional[bytes] = ..., finalize_response: _Optional[bytes] = ...) -> None: ...
