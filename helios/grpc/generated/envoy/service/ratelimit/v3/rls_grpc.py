import purerpc
import helios.grpc.generated.envoy.service.ratelimit.v3.rls_pb2 as envoy_dot_service_dot_ratelimit_dot_v3_dot_rls__pb2
import helios.grpc.generated.envoy.config.core.v3.base_pb2 as envoy_dot_config_dot_core_dot_v3_dot_base__pb2
import helios.grpc.generated.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 as envoy_dot_extensions_dot_common_dot_ratelimit_dot_v3_dot_ratelimit__pb2
import google.protobuf.duration_pb2 as google_dot_protobuf_dot_duration__pb2


class RateLimitServiceServicer(purerpc.Servicer):
    async def ShouldRateLimit(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "envoy.service.ratelimit.v3.RateLimitService"
        )
        service_obj.add_method(
            "ShouldRateLimit",
            self.ShouldRateLimit,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                envoy_dot_service_dot_ratelimit_dot_v3_dot_rls__pb2.RateLimitRequest,
                envoy_dot_service_dot_ratelimit_dot_v3_dot_rls__pb2.RateLimitResponse,
            )
        )
        return service_obj


class RateLimitServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "envoy.service.ratelimit.v3.RateLimitService",
            channel
        )
        self.ShouldRateLimit = self._client.get_method_stub(
            "ShouldRateLimit",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                envoy_dot_service_dot_ratelimit_dot_v3_dot_rls__pb2.RateLimitRequest,
                envoy_dot_service_dot_ratelimit_dot_v3_dot_rls__pb2.RateLimitResponse,
            )
        )