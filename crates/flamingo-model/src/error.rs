//! One error type for the crate. Loading problems name the key, the file and the shapes so an
//! operator can tell which download is wrong.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, ModelError>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("tensor `{key}` not found in {files}")]
    MissingTensor { key: String, files: String },
    #[error("tensor `{key}` in {file}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        key: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: loaded zero tensors (a nested dict, a pickled module or not a state dict?)")]
    NoTensors { file: PathBuf },
    #[error("{file}: {message}")]
    BadFile { file: PathBuf, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("model layout: {0}")]
    Layout(String),
    /// The files load, but describe something this implementation cannot run (refused at load
    /// time so that no request fails on it later).
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("unknown sequence {0}")]
    UnknownSequence(u64),
    #[error("tensor error: {0}")]
    Candle(candle_core::Error),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Candle(e)
    }
}
