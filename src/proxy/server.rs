//! Starting the pingora server, and draining it on SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, Server};
use pingora::services::listening::Service;

use super::Gateway;
use crate::config::Config;

/// Runs the gateway until SIGTERM (drain, then exit 0) or SIGINT (exit at once); SIGHUP (and,
/// with `watch`, a change of the file) reloads the configuration from `path` (the embedded
/// default when `None`). Returns only when it cannot start.
pub fn run(config: Config, path: Option<PathBuf>, watch: bool) -> Result<(), String> {
    // pingora binds in a service thread and panics there if the port is taken, while the process
    // lives on; find out here and say so.
    std::net::TcpListener::bind(config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;

    if config.keys.is_empty() {
        let open = "no gateway keys are configured (`keys:`): anyone who reaches the gateway may use it, and its upstream keys";
        if config.listen.ip().is_loopback() {
            tracing::warn!("{open}; it listens on loopback only ({})", config.listen);
        } else {
            tracing::error!(
                "{open}, and it listens on {}, beyond loopback: add keys (`switchyard key new --name NAME`)",
                config.listen
            );
        }
    }
    if let Some(routing) = &config.routing {
        tracing::info!("scorer: {}", routing.scorer.describe());
    }
    if config.serves_ui() {
        tracing::info!("dashboard: http://{}/ui", config.listen);
    } else if config.ui == crate::config::Ui::Auto {
        tracing::info!("dashboard page off: it listens beyond loopback without keys (`server.ui: on` serves it)");
    }
    let drain = config.drain_timeout;
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let listen = config.listen.to_string();
    let conf = ServerConf {
        threads,
        // pingora waits this long after SIGTERM before stopping its runtimes; the watcher below
        // exits earlier as soon as nothing is in flight.
        grace_period_seconds: Some(drain.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let gateway = Gateway::new(config)?;
    gateway.reloader().spawn(path, watch)?;
    let in_flight = gateway.in_flight();
    let checks =
        pingora::services::background::background_service("health checks", gateway.health_checks());
    server.add_service(checks);
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options.h2_idle_timeout = Some(gateway.limits().idle_timeout);
    let limits = gateway.limits_source();
    let metrics = gateway.conn_metrics.clone();
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    proxy.server_options = Some(options);
    let front = super::conn::Front::new(proxy, limits, metrics);
    let mut service = Service::new("switchyard".to_owned(), front);
    service.add_tcp(&listen);
    server.add_service(service);

    let mut phases = server.watch_execution_phase();
    std::thread::spawn(move || loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::GracefulTerminate) => {
                let until = Instant::now() + drain;
                while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let left = in_flight.load(Ordering::Acquire);
                if left > 0 {
                    tracing::warn!("drain timeout: {left} requests still in flight; exiting");
                } else {
                    tracing::info!("drained; exiting");
                }
                std::process::exit(0);
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    });

    tracing::info!("switchyard {} listening on {listen}", crate::VERSION);
    server.run_forever()
}
