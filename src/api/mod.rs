//! The parts of the OpenAI API the gateway itself understands: the chat request view and the
//! error body.

mod chat;
mod error;

pub use chat::{ChatRequest, Content, Message};
pub use error::ApiError;
