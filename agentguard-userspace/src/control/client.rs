//! The blocking client every CLI command uses. Blocking on purpose: `agentguard run` must stay
//! single-threaded so it can apply Landlock and credentials to the whole process before exec.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use super::proto::{Reply, Request, Response};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens there.
    #[error(
        "cannot connect to the agentguard daemon at {path}: {source} (is `agentguard daemon` running? use --socket or AGENTGUARD_SOCKET for another socket)"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon's answer was not understood.
    #[error("unexpected reply from the daemon: {0}")]
    Protocol(String),
    /// The daemon refused or failed the request.
    #[error("{0}")]
    Daemon(String),
}

/// A connection to the daemon.
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects (the socket is close-on-exec: an agent never inherits it).
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self {
            writer: stream,
            reader,
        })
    }

    /// Sends a request and waits for its reply.
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let mut line =
            serde_json::to_string(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::Protocol(
                "the daemon closed the connection".into(),
            ));
        }
        match serde_json::from_str::<Response>(&answer) {
            Ok(Response::Ok(reply)) => Ok(reply),
            Ok(Response::Error(message)) => Err(ClientError::Daemon(message)),
            Err(e) => Err(ClientError::Protocol(format!("{e}: {}", answer.trim()))),
        }
    }
}
