//! The thin tonic adapter of [`Policy`].

use crate::service::Policy;
use presence_auth::principal_of;
use presence_directory::grpc::respond;
use presence_proto::v1::{self, policy_service_server::PolicyService};
use tonic::{Request, Response, Status};

/// The gRPC face of [`Policy`].
#[derive(Clone)]
pub struct PolicyGrpc(pub Policy);

macro_rules! policy_rpcs {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl PolicyService for PolicyGrpc {
            $(
                async fn $name(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    let p = principal_of(&request).map_err(|e| respond(stringify!($name), e))?;
                    self.0
                        .$name(&p, request.into_inner())
                        .await
                        .map(Response::new)
                        .map_err(|e| respond(stringify!($name), e))
                }
            )*
        }
    };
}

policy_rpcs! {
    get_presence_settings(v1::GetPresenceSettingsRequest) -> v1::PresenceSettings;
    update_presence_settings(v1::UpdatePresenceSettingsRequest) -> v1::PresenceSettings;
    list_grants(v1::ListGrantsRequest) -> v1::Grants;
    set_grants(v1::SetGrantsRequest) -> v1::Grants;
    add_grant(v1::AddGrantRequest) -> v1::Grants;
    remove_grant(v1::RemoveGrantRequest) -> v1::Grants;
    get_monitored_lines(v1::GetMonitoredLinesRequest) -> v1::MonitoredLines;
    set_monitored_lines(v1::SetMonitoredLinesRequest) -> v1::MonitoredLines;
    get_domain_policy(v1::GetDomainPolicyRequest) -> v1::DomainPolicy;
    update_domain_policy(v1::UpdateDomainPolicyRequest) -> v1::DomainPolicy;
    check_see(v1::CheckRequest) -> v1::CheckResponse;
    check_pickup(v1::CheckRequest) -> v1::CheckResponse;
    explain(v1::ExplainRequest) -> v1::Explanation;
    list_watchers(v1::ListWatchersRequest) -> v1::ListWatchersResponse;
    list_monitorable(v1::ListMonitorableRequest) -> v1::ListMonitorableResponse;
}
