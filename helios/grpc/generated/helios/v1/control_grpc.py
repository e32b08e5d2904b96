import purerpc
import helios.grpc.generated.helios.v1.control_pb2 as helios_dot_v1_dot_control__pb2


class ControlServiceServicer(purerpc.Servicer):
    async def CreateTenant(self, input_message):
        raise NotImplementedError()

    async def GetTenant(self, input_message):
        raise NotImplementedError()

    async def UpdateTenant(self, input_message):
        raise NotImplementedError()

    async def DeleteTenant(self, input_message):
        raise NotImplementedError()

    async def ListTenants(self, input_message):
        raise NotImplementedError()

    async def PutPolicy(self, input_message):
        raise NotImplementedError()

    async def GetPolicy(self, input_message):
        raise NotImplementedError()

    async def DeletePolicy(self, input_message):
        raise NotImplementedError()

    async def ListPolicies(self, input_message):
        raise NotImplementedError()

    async def IssueKey(self, input_message):
        raise NotImplementedError()

    async def ListKeys(self, input_message):
        raise NotImplementedError()

    async def RevokeKey(self, input_message):
        raise NotImplementedError()

    async def ListGateways(self, input_message):
        raise NotImplementedError()

    async def ResetCounters(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "helios.v1.ControlService"
        )
        service_obj.add_method(
            "CreateTenant",
            self.CreateTenant,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.CreateTenantRequest,
                helios_dot_v1_dot_control__pb2.Tenant,
            )
        )
        service_obj.add_method(
            "GetTenant",
            self.GetTenant,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.GetTenantRequest,
                helios_dot_v1_dot_control__pb2.Tenant,
            )
        )
        service_obj.add_method(
            "UpdateTenant",
            self.UpdateTenant,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.UpdateTenantRequest,
                helios_dot_v1_dot_control__pb2.Tenant,
            )
        )
        service_obj.add_method(
            "DeleteTenant",
            self.DeleteTenant,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.DeleteTenantRequest,
                helios_dot_v1_dot_control__pb2.DeleteTenantResponse,
            )
        )
        service_obj.add_method(
            "ListTenants",
            self.ListTenants,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ListTenantsRequest,
                helios_dot_v1_dot_control__pb2.ListTenantsResponse,
            )
        )
        service_obj.add_method(
            "PutPolicy",
            self.PutPolicy,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.PutPolicyRequest,
                helios_dot_v1_dot_control__pb2.PutPolicyResponse,
            )
        )
        service_obj.add_method(
            "GetPolicy",
            self.GetPolicy,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.GetPolicyRequest,
                helios_dot_v1_dot_control__pb2.Policy,
            )
        )
        service_obj.add_method(
            "DeletePolicy",
            self.DeletePolicy,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.DeletePolicyRequest,
                helios_dot_v1_dot_control__pb2.DeletePolicyResponse,
            )
        )
        service_obj.add_method(
            "ListPolicies",
            self.ListPolicies,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ListPoliciesRequest,
                helios_dot_v1_dot_control__pb2.ListPoliciesResponse,
            )
        )
        service_obj.add_method(
            "IssueKey",
            self.IssueKey,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.IssueKeyRequest,
                helios_dot_v1_dot_control__pb2.IssueKeyResponse,
            )
        )
        service_obj.add_method(
            "ListKeys",
            self.ListKeys,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ListKeysRequest,
                helios_dot_v1_dot_control__pb2.ListKeysResponse,
            )
        )
        service_obj.add_method(
            "RevokeKey",
            self.RevokeKey,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.RevokeKeyRequest,
                helios_dot_v1_dot_control__pb2.RevokeKeyResponse,
            )
        )
        service_obj.add_method(
            "ListGateways",
            self.ListGateways,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ListGatewaysRequest,
                helios_dot_v1_dot_control__pb2.ListGatewaysResponse,
            )
        )
        service_obj.add_method(
            "ResetCounters",
            self.ResetCounters,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ResetCountersRequest,
                helios_dot_v1_dot_control__pb2.Reset,
            )
        )
        return service_obj


class ControlServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "helios.v1.ControlService",
            channel
        )
        self.CreateTenant = self._client.get_method_stub(
            "CreateTenant",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.CreateTenantRequest,
                helios_dot_v1_dot_control__pb2.Tenant,
            )
        )
        self.GetTenant = self._client.get_method_stub(
            "GetTenant",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.GetTenantRequest,
                helios_dot_v1_dot_control__pb2.Tenant,
            )
        )
        self.UpdateTenant = self._client.get_method_stub(
            "UpdateTenant",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.UpdateTenantRequest,
                helios_dot_v1_dot_control__pb2.Tenant,
            )
        )
        self.DeleteTenant = self._client.get_method_stub(
            "DeleteTenant",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.DeleteTenantRequest,
                helios_dot_v1_dot_control__pb2.DeleteTenantResponse,
            )
        )
        self.ListTenants = self._client.get_method_stub(
            "ListTenants",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ListTenantsRequest,
                helios_dot_v1_dot_control__pb2.ListTenantsResponse,
            )
        )
        self.PutPolicy = self._client.get_method_stub(
            "PutPolicy",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.PutPolicyRequest,
                helios_dot_v1_dot_control__pb2.PutPolicyResponse,
            )
        )
        self.GetPolicy = self._client.get_method_stub(
            "GetPolicy",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.GetPolicyRequest,
                helios_dot_v1_dot_control__pb2.Policy,
            )
        )
        self.DeletePolicy = self._client.get_method_stub(
            "DeletePolicy",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.DeletePolicyRequest,
                helios_dot_v1_dot_control__pb2.DeletePolicyResponse,
            )
        )
        self.ListPolicies = self._client.get_method_stub(
            "ListPolicies",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ListPoliciesRequest,
                helios_dot_v1_dot_control__pb2.ListPoliciesResponse,
            )
        )
        self.IssueKey = self._client.get_method_stub(
            "IssueKey",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.IssueKeyRequest,
                helios_dot_v1_dot_control__pb2.IssueKeyResponse,
            )
        )
        self.ListKeys = self._client.get_method_stub(
            "ListKeys",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ListKeysRequest,
                helios_dot_v1_dot_control__pb2.ListKeysResponse,
            )
        )
        self.RevokeKey = self._client.get_method_stub(
            "RevokeKey",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.RevokeKeyRequest,
                helios_dot_v1_dot_control__pb2.RevokeKeyResponse,
            )
        )
        self.ListGateways = self._client.get_method_stub(
            "ListGateways",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ListGatewaysRequest,
                helios_dot_v1_dot_control__pb2.ListGatewaysResponse,
            )
        )
        self.ResetCounters = self._client.get_method_stub(
            "ResetCounters",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                helios_dot_v1_dot_control__pb2.ResetCountersRequest,
                helios_dot_v1_dot_control__pb2.Reset,
            )
        )