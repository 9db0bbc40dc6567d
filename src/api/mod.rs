//! The parts of the OpenAI API the gateway itself understands: the chat request view, the
//! answer (JSON or streamed) and the error body.

mod chat;
mod completion;
mod error;

pub use chat::{ChatRequest, Content, Message, Part, Role};
pub use completion::{Choice, Completion, EventKind, StreamAssembler, ToolCall, Usage};
pub use error::ApiError;
