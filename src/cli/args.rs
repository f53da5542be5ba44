//! Flags every client command shares: how to reach the cluster and how long to try.

use std::time::Duration;

use crate::client::{ClientOptions, ConnectOptions, BOOTSTRAP_DEFAULT};

/// How a client command reaches the cluster.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ClientArgs {
    /// Client addresses of one or more nodes, HOST:PORT[,HOST:PORT...]
    #[arg(
        long,
        env = "RAFTLOG_BOOTSTRAP",
        default_value = BOOTSTRAP_DEFAULT,
        value_delimiter = ',',
        value_parser = parse_address,
        global = true,
        value_name = "HOST:PORT,..."
    )]
    pub bootstrap: Vec<String>,

    /// Cluster id the nodes must belong to
    #[arg(
        long,
        env = "RAFTLOG_CLUSTER_ID",
        default_value = "raftlog",
        global = true
    )]
    pub cluster_id: String,

    /// Longest wait for the cluster to answer at start-up, in milliseconds
    #[arg(long, default_value_t = 5_000, global = true, value_name = "MS")]
    pub connect_timeout_ms: u64,

    /// Longest time for one request, retries included, in milliseconds
    #[arg(long, default_value_t = 30_000, global = true, value_name = "MS")]
    pub request_timeout_ms: u64,
}

impl ClientArgs {
    /// The client library options these flags describe.
    pub fn options(&self) -> ClientOptions {
        let connect_timeout = Duration::from_millis(self.connect_timeout_ms.max(1));
        ClientOptions {
            bootstrap: self.bootstrap.clone(),
            connect: ConnectOptions {
                cluster_id: self.cluster_id.clone(),
                client_id: "raftlog-cli".into(),
                connect_timeout,
                ..ConnectOptions::default()
            },
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            bootstrap_timeout: connect_timeout,
            ..ClientOptions::default()
        }
    }
}

/// Accepts `HOST:PORT` with a non-empty host and a port in 1..=65535.
///
/// # Errors
/// A message saying what is wrong with the address.
pub fn parse_address(text: &str) -> Result<String, String> {
    let text = text.trim();
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} is not HOST:PORT"));
    };
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(text.to_owned()),
        _ => Err(format!("{text:?} has no valid port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(parse_address("127.0.0.1:9400").unwrap(), "127.0.0.1:9400");
        assert_eq!(parse_address("[::1]:9400").unwrap(), "[::1]:9400");
        assert_eq!(parse_address("node-1:1").unwrap(), "node-1:1");
        for bad in [
            "",
            "9400",
            ":9400",
            "host:",
            "host:0",
            "host:65536",
            "host:port",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?} accepted");
        }
    }
}
