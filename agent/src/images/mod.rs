//! Images: references, the content-addressed store, and layer unpacking.

mod beneath;
pub mod credentials;
pub mod gc;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod scratch;
pub mod store;
pub mod unpack;

pub use reference::Reference;
pub use store::{Image, ImageStore};
