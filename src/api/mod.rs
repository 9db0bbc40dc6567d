//! The parts of the OpenAI API the gateway itself understands: the chat request view, the
//! answer (JSON or streamed) and the error body.

mod chat;
mod completion;
mod error;
pub mod ids;

pub use chat::{ChatRequest, Content, Message, Part, Role};
pub use completion::{
    Choice, Chunk, ChunkSink, Completion, Delta, DeltaChoice, DeltaFunction, DeltaToolCall,
    EventKind, Field, StreamAssembler, ToolCall, Usage, DONE_EVENT,
};
pub use error::ApiError;
