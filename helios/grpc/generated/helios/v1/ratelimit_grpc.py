import purerpc
import helios.grpc.generated.helios.v1.ratelimit_pb2 as helios_dot_v1_dot_ratelimit__pb2


class RateLimitServiceServicer(purerpc.Servicer):
    async def Allow(self, input_message):
        raise NotImplementedError()

    async def AllowBatch(self, input_message):
        raise NotImplementedError()

    async def GetQuota(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "helios.v1.RateLimitService"
        )
        service_obj.add_method(
            "Allow",
            self.Allow,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_ratelimit__pb2.AllowRequest,
                helios_dot_v1_dot_ratelimit__pb2.Decision,
            )
        )
        service_obj.add_method(
            "AllowBatch",
            self.AllowBatch,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_ratelimit__pb2.AllowBatchRequest,
                helios_dot_v1_dot_ratelimit__pb2.AllowBatchResponse,
            )
        )
        service_obj.add_method(
            "GetQuota",
            self.GetQuota,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_ratelimit__pb2.GetQuotaRequest,
                helios_dot_v1_dot_ratelimit__pb2.Quota,
            )
        )
        return service_obj


class RateLimitServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "helios.v1.RateLimitService",
            channel
        )
        self.Allow = self._client.get_method_stub(
            "Allow",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_ratelimit__pb2.AllowRequest,
                helios_dot_v1_dot_ratelimit__pb2.Decision,
            )
        )
        self.AllowBatch = self._client.get_method_stub(
            "AllowBatch",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_ratelimit__pb2.AllowBatchRequest,
                helios_dot_v1_dot_ratelimit__pb2.AllowBatchResponse,
            )
        )
        self.GetQuota = self._client.get_method_stub(
            "GetQuota",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_ratelimit__pb2.GetQuotaRequest,
                helios_dot_v1_dot_ratelimit__pb2.Quota,
            )
        )