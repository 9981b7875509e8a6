//! A preview's end (`ForgeAction::RemovePreview`), under its app lease: its
//! services are torn down with their data, its containers removed, its
//! routes dropped, and then the app is forgotten, in one fenced write that
//! also records the end in the saga `preview:<app>` and on `/ws`.

use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::db::{apps, lease, previews, routes};
use norn_shared::domain::ForgeStatus;
use norn_shared::events::{self, Event, EventBody, PreviewRemoved};
use serde_json::json;

use crate::WorkerError;
use crate::forge::{Forge, ForgeError, Operation};
use crate::state::WorkerState;

pub async fn remove(
    state: &WorkerState,
    app: &apps::App,
    forged: ForgeStatus,
    token: i64,
) -> Result<(), WorkerError> {
    let name = app.id.as_str();
    let reason = {
        let mut conn = state.pool.acquire().await?;
        previews::get(&mut conn, name)
            .await?
            .and_then(|p| p.reason)
            .unwrap_or_else(|| "preview removed".into())
    };
    if forged != ForgeStatus::Unforged {
        let forge = Forge {
            state,
            app: name,
            spec: &app.spec,
            token,
            actor: &state.config.node_name,
        };
        let mut log = norn_shared::text::Tail::new(64 * 1024);
        match forge
            .operate(Operation::Teardown { drop_data: true }, &mut log)
            .await
        {
            Ok(_) => {}
            Err(ForgeError::Fenced) => return Err(WorkerError::Fenced),
            // Recorded by the forge (forge_failed, with the step); the
            // preview stays `tearing_down` and the job is retried.
            Err(e) => return Err(WorkerError::Interrupted(e.to_string())),
        }
    }
    let instances = state
        .runtime
        .instances(name)
        .await
        .map_err(|e| WorkerError::Interrupted(e.to_string()))?;
    for (instance, _) in &instances {
        state
            .runtime
            .remove(instance)
            .await
            .map_err(|e| WorkerError::Interrupted(e.to_string()))?;
    }
    let Some(mut tx) = lease::fenced(&state.pool, name, token).await? else {
        return Err(WorkerError::Fenced);
    };
    routes::remove_app(&mut tx, name).await?;
    apps::remove(&mut tx, name).await?;
    previews::remove(&mut tx, name).await?;
    saga::append(
        &mut tx,
        NewSagaEvent {
            saga_id: &format!("preview:{name}"),
            app: name,
            category: "preview",
            action: "preview.removed",
            step: None,
            message: &reason,
            actor: &state.config.node_name,
            metadata: json!({"containers": instances.len()}),
        },
    )
    .await?;
    events::publish(
        &mut tx,
        &Event::new(
            name,
            EventBody::PreviewRemoved(PreviewRemoved {
                app: name.to_owned(),
                reason: reason.clone(),
            }),
        ),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(containers = instances.len(), reason = %reason, "preview removed");
    Ok(())
}
