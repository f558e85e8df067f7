//! Thin tonic adapters: take the principal from the request extensions,
//! call [`Directory`], map errors with `presence_proto::status`.

use crate::service::Directory;
use presence_auth::{TokenExpiry, principal_of};
use presence_core::ApiError;
use presence_proto::status::to_status;
use presence_proto::v1::{
    self, auth_service_server::AuthService, directory_service_server::DirectoryService,
};
use tonic::{Request, Response, Status};

/// Maps an API error to a status, logging internal errors.
pub fn respond(rpc: &'static str, e: ApiError) -> Status {
    if let ApiError::Internal(m) = &e {
        tracing::error!(rpc, error = %m, "internal error");
    }
    metrics::counter!("presence_rpc_errors_total", "rpc" => rpc).increment(1);
    to_status(e)
}

/// The gRPC face of [`Directory`] for DirectoryService.
#[derive(Clone)]
pub struct DirectoryGrpc(pub Directory);

/// The gRPC face of [`Directory`] for AuthService.
#[derive(Clone)]
pub struct AuthGrpc(pub Directory);

macro_rules! directory_rpcs {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl DirectoryService for DirectoryGrpc {
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

directory_rpcs! {
    create_domain(v1::CreateDomainRequest) -> v1::Domain;
    get_domain(v1::GetDomainRequest) -> v1::Domain;
    list_domains(v1::ListDomainsRequest) -> v1::ListDomainsResponse;
    update_domain(v1::UpdateDomainRequest) -> v1::Domain;
    delete_domain(v1::DeleteDomainRequest) -> v1::DeleteResponse;
    create_site(v1::CreateSiteRequest) -> v1::Site;
    get_site(v1::GetSiteRequest) -> v1::Site;
    list_sites(v1::ListSitesRequest) -> v1::ListSitesResponse;
    update_site(v1::UpdateSiteRequest) -> v1::Site;
    delete_site(v1::DeleteSiteRequest) -> v1::DeleteResponse;
    create_user(v1::CreateUserRequest) -> v1::User;
    get_user(v1::GetUserRequest) -> v1::User;
    list_users(v1::ListUsersRequest) -> v1::ListUsersResponse;
    update_user(v1::UpdateUserRequest) -> v1::User;
    delete_user(v1::DeleteUserRequest) -> v1::DeleteResponse;
    get_user_options(v1::GetUserOptionsRequest) -> v1::UserOptions;
    set_answering_rules(v1::SetAnsweringRulesRequest) -> v1::UserOptions;
    update_voicemail(v1::UpdateVoicemailRequest) -> v1::UserOptions;
    reset_user(v1::ResetUserRequest) -> v1::User;
    send_welcome(v1::SendWelcomeRequest) -> v1::SendWelcomeResponse;
    force_password_reset(v1::ForcePasswordResetRequest) -> v1::User;
    add_phone(v1::AddPhoneRequest) -> v1::Phone;
    get_phone(v1::GetPhoneRequest) -> v1::Phone;
    update_phone(v1::UpdatePhoneRequest) -> v1::Phone;
    delete_phone(v1::DeletePhoneRequest) -> v1::DeleteResponse;
    list_phones(v1::ListPhonesRequest) -> v1::ListPhonesResponse;
    get_queue(v1::GetQueueRequest) -> v1::Queue;
    list_queues(v1::ListQueuesRequest) -> v1::ListQueuesResponse;
    set_queue_members(v1::SetQueueMembersRequest) -> v1::Queue;
    set_queue_login(v1::SetQueueLoginRequest) -> v1::Queue;
    list_audit_events(v1::ListAuditEventsRequest) -> v1::ListAuditEventsResponse;
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn login(
        &self,
        request: Request<v1::LoginRequest>,
    ) -> Result<Response<v1::LoginResponse>, Status> {
        let peer = request.remote_addr();
        self.0
            .login(request.into_inner(), peer)
            .await
            .map(Response::new)
            .map_err(|e| respond("login", e))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let p = principal_of(&request).map_err(|e| respond("revoke_token", e))?;
        let own = request
            .extensions()
            .get::<presence_auth::interceptor::TokenId>()
            .map(|t| t.0.clone());
        self.0
            .revoke_token(&p, own.as_deref(), request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| respond("revoke_token", e))
    }

    async fn list_signing_keys(
        &self,
        request: Request<v1::ListSigningKeysRequest>,
    ) -> Result<Response<v1::ListSigningKeysResponse>, Status> {
        let p = principal_of(&request).map_err(|e| respond("list_signing_keys", e))?;
        self.0
            .list_signing_keys(&p)
            .await
            .map(Response::new)
            .map_err(|e| respond("list_signing_keys", e))
    }

    async fn add_signing_key(
        &self,
        request: Request<v1::AddSigningKeyRequest>,
    ) -> Result<Response<v1::SigningKey>, Status> {
        let p = principal_of(&request).map_err(|e| respond("add_signing_key", e))?;
        self.0
            .add_signing_key(&p)
            .await
            .map(Response::new)
            .map_err(|e| respond("add_signing_key", e))
    }

    async fn retire_signing_key(
        &self,
        request: Request<v1::RetireSigningKeyRequest>,
    ) -> Result<Response<v1::SigningKey>, Status> {
        let p = principal_of(&request).map_err(|e| respond("retire_signing_key", e))?;
        self.0
            .retire_signing_key(&p, &request.get_ref().id)
            .await
            .map(Response::new)
            .map_err(|e| respond("retire_signing_key", e))
    }

    async fn accept_welcome(
        &self,
        request: Request<v1::AcceptWelcomeRequest>,
    ) -> Result<Response<v1::LoginResponse>, Status> {
        self.0
            .accept_welcome(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| respond("accept_welcome", e))
    }

    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let p = principal_of(&request).map_err(|e| respond("who_am_i", e))?;
        let exp = request
            .extensions()
            .get::<TokenExpiry>()
            .map(|e| e.0)
            .unwrap_or_default();
        Ok(Response::new(v1::WhoAmIResponse {
            principal: Some(p.to_proto()),
            expires_at_ms: exp,
        }))
    }

    async fn change_password(
        &self,
        request: Request<v1::ChangePasswordRequest>,
    ) -> Result<Response<v1::ChangePasswordResponse>, Status> {
        let p = principal_of(&request).map_err(|e| respond("change_password", e))?;
        self.0
            .change_password(&p, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| respond("change_password", e))
    }

    async fn issue_token(
        &self,
        request: Request<v1::IssueTokenRequest>,
    ) -> Result<Response<v1::IssueTokenResponse>, Status> {
        let p = principal_of(&request).map_err(|e| respond("issue_token", e))?;
        self.0
            .issue_token(&p, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| respond("issue_token", e))
    }
}
