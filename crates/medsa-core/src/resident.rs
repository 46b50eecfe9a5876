//! Device-resident storage: the interface a backend's device buffer offers a [`crate::Tensor`].
//!
//! A tensor's elements live in host memory or in a [`DeviceData`] buffer that a backend made
//! (ARCHITECTURE.md, "Tensors and the Backend"). Backends move data explicitly
//! ([`crate::Backend::upload`], [`crate::Backend::download`]) and hand their results back as
//! device tensors, so a chain of ops on one device never crosses to the host. Host code that
//! reads a device tensor anyway ([`crate::Tensor::data`]) gets one download, cached in the
//! tensor: correct, but counted by the backend, which is how the tests find such crossings.

use std::any::Any;

/// A device buffer holding a tensor's elements, as a backend sees it through `as_any`.
pub trait DeviceData: Send + Sync + std::fmt::Debug {
    /// Elements it holds (at least the tensor's element count).
    fn len(&self) -> usize;
    /// Whether it holds no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies its first `n` elements to the host as f32 (one download).
    fn read(&self, n: usize) -> Result<Vec<f32>, String>;
    /// The concrete buffer, for the backend that made it.
    fn as_any(&self) -> &dyn Any;
}
