//! `dealmesh.v1.NotifyService` over gRPC.

use std::pin::Pin;

use dealmesh_auth::{Authenticator, Principal, Role};
use dealmesh_proto::v1::notify_service_server::NotifyService;
use dealmesh_proto::v1::{
    CreateSubscriptionRequest, CreateSubscriptionResponse, DeleteSubscriptionRequest,
    DeleteSubscriptionResponse, ListSubscriptionsRequest, ListSubscriptionsResponse,
    NotificationTrigger, SubscribeRequest, SubscribeResponse,
};
use dealmesh_runtime::grpc::{Violation, invalid_argument};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::feed::{self, Feed, Selection};
use crate::subscription::{self, ChannelSpec, Draft, Origin, StoreError};

pub struct NotifyApi {
    pool: PgPool,
    auth: Authenticator,
    email_enabled: bool,
    feed: Feed,
    shutdown: CancellationToken,
}

impl NotifyApi {
    pub fn new(
        pool: PgPool,
        auth: Authenticator,
        email_enabled: bool,
        feed: Feed,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pool,
            auth,
            email_enabled,
            feed,
            shutdown,
        }
    }

    async fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        self.auth.from_metadata(request.metadata()).await
    }
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NotFound(_) => Status::not_found(error.to_string()),
        StoreError::FromConfig(_) => Status::failed_precondition(error.to_string()),
        StoreError::Database(e) => {
            tracing::error!(error = %e, "subscription store failed");
            Status::unavailable("the subscription store is unavailable; retry")
        }
    }
}

/// Whose subscriptions a caller manages: their own, or (admins) everyone's.
fn scope(principal: &Principal) -> Option<&str> {
    (principal.role != Role::Admin).then_some(principal.subject.as_str())
}

type FeedStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NotifyService for NotifyApi {
    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> Result<Response<CreateSubscriptionResponse>, Status> {
        let principal = self.principal(&request).await?;
        let Some(draft) = request.into_inner().subscription else {
            return Err(invalid_argument(
                "subscription is required",
                &[Violation::new("subscription", "is required")],
            ));
        };
        let new = Draft::from_proto(draft)
            .validate("subscription.", &principal, self.email_enabled, Origin::Api)
            .map_err(|violations| invalid_argument("the subscription is invalid", &violations))?;
        subscription::upsert(&self.pool, &new)
            .await
            .map_err(store_status)?;
        let signing_secret = match &new.channel {
            ChannelSpec::Webhook { secret, .. } => secret.expose_secret().to_owned(),
            ChannelSpec::Email { .. } => String::new(),
        };
        let stored = subscription::list(&self.pool, Some(&principal.subject))
            .await
            .map_err(store_status)?
            .into_iter()
            .find(|s| s.id == new.id)
            .ok_or_else(|| {
                Status::internal("the new subscription was not found after storing it")
            })?;
        tracing::info!(subscription_id = %new.id, subscriber = %principal.subject, "subscription created");
        Ok(Response::new(CreateSubscriptionResponse {
            subscription: Some(stored.to_proto()),
            signing_secret,
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        let principal = self.principal(&request).await?;
        let subscriptions = subscription::list(&self.pool, scope(&principal))
            .await
            .map_err(store_status)?
            .iter()
            .map(subscription::Stored::to_proto)
            .collect();
        Ok(Response::new(ListSubscriptionsResponse { subscriptions }))
    }

    async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> Result<Response<DeleteSubscriptionResponse>, Status> {
        let principal = self.principal(&request).await?;
        let raw = request.into_inner().subscription_id;
        let id = uuid::Uuid::parse_str(&raw).map_err(|_| {
            invalid_argument(
                "subscription_id is invalid",
                &[Violation::new(
                    "subscription_id",
                    format!("{raw:?} is not a subscription id"),
                )],
            )
        })?;
        let cancelled = subscription::delete(&self.pool, id, scope(&principal))
            .await
            .map_err(store_status)?;
        tracing::info!(subscription_id = %id, cancelled, "subscription deleted");
        Ok(Response::new(DeleteSubscriptionResponse {
            cancelled_deliveries: cancelled,
        }))
    }

    type SubscribeStream = FeedStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = self.principal(&request).await?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        let after = feed::decode_cursor(&request.cursor).unwrap_or_else(|problem| {
            violations.push(Violation::new("cursor", problem));
            0
        });
        for (i, value) in request.triggers.iter().enumerate() {
            match NotificationTrigger::try_from(*value) {
                Ok(NotificationTrigger::Unspecified) | Err(_) => violations.push(Violation::new(
                    format!("triggers[{i}]"),
                    format!("unknown trigger {value}"),
                )),
                Ok(_) => {}
            }
        }
        if !violations.is_empty() {
            return Err(invalid_argument(
                "the subscribe request is invalid",
                &violations,
            ));
        }
        let rx = self.feed.stream(
            principal,
            Selection {
                after,
                triggers: request.triggers,
                deal_ids: request.deal_ids,
            },
            self.shutdown.clone(),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
