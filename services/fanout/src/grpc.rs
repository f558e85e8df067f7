//! The thin tonic adapter of [`Fanout`].

use crate::service::Fanout;
use futures_util::StreamExt;
use presence_auth::principal_of;
use presence_directory::grpc::respond;
use presence_proto::frame::{Frame, ManyFrame};
use presence_proto::presence_server::presence_service_server::PresenceService;
use presence_proto::v1;
use std::pin::Pin;
use tonic::{Request, Response, Status, Streaming};

/// The gRPC face of [`Fanout`].
#[derive(Clone)]
pub struct FanoutGrpc(pub Fanout);

/// The stream type of `Watch`: pre-encoded frames.
pub type WatchStream = Pin<Box<dyn futures_util::Stream<Item = Result<Frame, Status>> + Send>>;

/// The stream type of `WatchMany`: pre-encoded frames.
pub type WatchManyStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<ManyFrame, Status>> + Send>>;

#[tonic::async_trait]
impl PresenceService for FanoutGrpc {
    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let p = principal_of(&request).map_err(|e| respond("publish", e))?;
        self.0
            .publish(&p, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| respond("publish", e))
    }

    async fn get_presence(
        &self,
        request: Request<v1::GetPresenceRequest>,
    ) -> Result<Response<v1::GetPresenceResponse>, Status> {
        let p = principal_of(&request).map_err(|e| respond("get_presence", e))?;
        self.0
            .get_presence(&p, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| respond("get_presence", e))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let p = principal_of(&request).map_err(|e| respond("watch", e))?;
        let stream = self
            .0
            .watch(&p, request.into_inner())
            .await
            .map_err(|e| respond("watch", e))?;
        Ok(Response::new(Box::pin(stream.into_stream())))
    }

    type WatchManyStream = WatchManyStream;

    async fn watch_many(
        &self,
        request: Request<Streaming<v1::WatchManyRequest>>,
    ) -> Result<Response<Self::WatchManyStream>, Status> {
        let p = principal_of(&request).map_err(|e| respond("watch_many", e))?;
        let stream = self.0.watch_many(p, request.into_inner().boxed());
        Ok(Response::new(Box::pin(stream.into_stream())))
    }
}
