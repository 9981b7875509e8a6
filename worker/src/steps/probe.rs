//! One health probe of one new instance: its health path answering 2xx/3xx,
//! or its port accepting connections when it declares no health path.

use std::time::Duration;

use crate::pipeline::{DeployCtx, NewInstance};

/// `Ok` with what answered, or `Err` with why not.
pub async fn once(ctx: &DeployCtx<'_>, new: &NewInstance) -> Result<String, String> {
    let running = ctx
        .state
        .runtime
        .is_running(&new.instance.name)
        .await
        .unwrap_or(false);
    if !running {
        return Err(format!("{} is not running", new.instance.name));
    }
    let health = ctx
        .app
        .spec
        .processes
        .get(&new.process)
        .and_then(|p| p.health.clone());
    match (new.port, health) {
        (Some(port), Some(h)) => {
            let url = format!("http://{}:{port}{}", new.instance.ip, h.path);
            match ctx.state.http.get(&url).timeout(h.timeout).send().await {
                Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => {
                    Ok(format!(
                        "{} answered {} on {}",
                        new.instance.name,
                        resp.status().as_u16(),
                        h.path
                    ))
                }
                Ok(resp) => Err(format!("{url} answered {}", resp.status())),
                Err(e) => Err(format!("{url}: {e}")),
            }
        }
        (Some(port), None) => {
            let addr = format!("{}:{port}", new.instance.ip);
            let connect = tokio::net::TcpStream::connect(&addr);
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(_)) => Ok(format!(
                    "{} accepts connections on {port}",
                    new.instance.name
                )),
                Ok(Err(e)) => Err(format!("{addr}: {e}")),
                Err(_) => Err(format!("{addr}: connect timed out")),
            }
        }
        (None, _) => Ok(format!("{} is running", new.instance.name)),
    }
}
