//! Choosing where to train: a hardware GPU through wgpu, or burn's CPU backend (`flex`).
//!
//! `auto` takes wgpu only on a hardware adapter. A software Vulkan adapter (Mesa's lavapipe,
//! SwiftShader: wgpu's `DeviceType::Cpu`) counts as no GPU: measured on 2 cores, burn's wgpu
//! backend on lavapipe ran a 512×512 matmul + backward ≈ 15× slower than the CPU backend, and spent
//! ≈ 10 s compiling kernels on first use. `gpu` forces wgpu, software adapters included.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::wgpu::{WgpuSetup, wgpu};

use crate::error::ModelError;

/// What the user asked for (`--device auto|gpu|cpu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU if there is one, else the CPU backend.
    #[default]
    Auto,
    /// wgpu on whatever adapter it finds, software adapters included.
    Gpu,
    /// burn's CPU backend.
    Cpu,
}

impl FromStr for DeviceChoice {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(ModelError::Config(format!(
                "device must be auto, gpu or cpu, not {other:?}"
            ))),
        }
    }
}

/// The backend a selected device runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// burn's wgpu backend.
    Wgpu,
    /// burn's CPU backend (`flex`).
    Cpu,
}

/// A chosen device, with what a user should be told about it.
pub struct SelectedDevice {
    /// The device (without autodiff; the trainer adds it).
    pub device: Device,
    /// Its backend.
    pub kind: BackendKind,
    /// One line naming it: adapter name, graphics API, type, driver; or the CPU backend.
    pub summary: String,
    /// Why the CPU backend was chosen under `auto`, when it was.
    pub fallback_reason: Option<String>,
    /// The wgpu handles the device runs on, for the GPU codec to share.
    pub wgpu: Option<WgpuSetup>,
}

impl SelectedDevice {
    /// The wgpu device and queue training runs on, for the GPU codec to share; None on the CPU
    /// backend.
    pub fn wgpu_queue(&self) -> Option<(wgpu::Device, wgpu::Queue)> {
        match (self.kind, &self.wgpu) {
            (BackendKind::Wgpu, Some(setup)) => Some((setup.device.clone(), setup.queue.clone())),
            _ => None,
        }
    }
}

impl fmt::Debug for SelectedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectedDevice")
            .field("kind", &self.kind)
            .field("summary", &self.summary)
            .field("fallback_reason", &self.fallback_reason)
            .finish()
    }
}

/// Runs a future that completes without waiting on anything external (wgpu's native adapter
/// enumeration), on this thread.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// The adapters wgpu sees on this machine.
pub fn adapters() -> Vec<wgpu::AdapterInfo> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    // Vulkan, Metal, DX12 and WebGPU: GL adds no compute adapter worth training on, and probing it
    // without a display prints EGL errors.
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
        .into_iter()
        .map(|a| a.get_info())
        .collect()
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    // Browsers may keep the adapter's name and driver to themselves.
    let name = if info.name.is_empty() {
        "unnamed adapter"
    } else {
        &info.name
    };
    let driver = format!("{} {}", info.driver, info.driver_info);
    let driver = match driver.trim() {
        "" => String::new(),
        d => format!(", driver {d}"),
    };
    format!(
        "{name} ({:?}, {:?}{driver})",
        info.backend, info.device_type
    )
}

fn cpu(reason: Option<String>) -> SelectedDevice {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    SelectedDevice {
        device: Device::flex(),
        kind: BackendKind::Cpu,
        summary: format!("CPU backend (burn flex, {threads} threads)"),
        fallback_reason: reason,
        wgpu: None,
    }
}

#[cfg(target_arch = "wasm32")]
fn wgpu_device(_: DeviceKind) -> Result<SelectedDevice, ModelError> {
    // A browser cannot block on WebGPU's adapter request: use `select_async` there.
    Err(ModelError::Device(
        "WebGPU must be initialised asynchronously in the browser (select_async)".into(),
    ))
}

/// Whether an adapter renders in software (SwiftShader, lavapipe, llvmpipe, WARP). Browsers do
/// not tell the device type through WebGPU (wgpu reports `Other`), so names count too.
fn is_software(info: &wgpu::AdapterInfo) -> bool {
    if info.device_type == wgpu::DeviceType::Cpu {
        return true;
    }
    let text = format!("{} {} {}", info.name, info.driver, info.driver_info).to_lowercase();
    [
        "swiftshader",
        "llvmpipe",
        "lavapipe",
        "softpipe",
        "microsoft basic render",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// [`select`] without blocking, for the browser (WebGPU's adapter and device requests are
/// asynchronous there): `gpu` takes burn's wgpu backend on whatever adapter the browser offers;
/// `auto` takes it unless the adapter is a software one, or there is none, and says why it fell
/// back to the CPU backend. Natively it is [`select`].
pub async fn select_async(choice: DeviceChoice) -> Result<SelectedDevice, ModelError> {
    if cfg!(not(target_arch = "wasm32")) || choice == DeviceChoice::Cpu {
        return select(choice);
    }
    match Device::wgpu_options().init_with_setup_async().await {
        Ok((device, setup)) => {
            let info = setup.adapter.get_info();
            if choice == DeviceChoice::Auto && is_software(&info) {
                return Ok(cpu(Some(format!(
                    "only the software WebGPU adapter {} (slower than the CPU backend); CPU fallback",
                    describe(&info)
                ))));
            }
            Ok(on_wgpu(device, setup))
        }
        Err(e) if choice == DeviceChoice::Auto => Ok(cpu(Some(format!(
            "no WebGPU adapter ({e:?}): CPU fallback"
        )))),
        Err(e) => Err(ModelError::Device(format!(
            "WebGPU initialisation failed: {e:?}"
        ))),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn wgpu_device(kind: DeviceKind) -> Result<SelectedDevice, ModelError> {
    let (device, setup) = Device::wgpu_options()
        .device_kind(kind)
        .init_with_setup()
        .map_err(|e| ModelError::Device(format!("wgpu initialisation failed: {e:?}")))?;
    Ok(on_wgpu(device, setup))
}

/// A wgpu device, described by its adapter.
fn on_wgpu(device: Device, setup: WgpuSetup) -> SelectedDevice {
    let summary = format!("wgpu: {}", describe(&setup.adapter.get_info()));
    SelectedDevice {
        device,
        kind: BackendKind::Wgpu,
        summary,
        fallback_reason: None,
        wgpu: Some(setup),
    }
}

/// Picks the device for `choice`. Call it before creating any tensor: burn initialises a wgpu
/// runtime once.
pub fn select(choice: DeviceChoice) -> Result<SelectedDevice, ModelError> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu(None)),
        DeviceChoice::Gpu => {
            let found = adapters();
            let Some(best) = found
                .iter()
                .find(|a| !is_software(a))
                .or_else(|| found.first())
            else {
                return Err(ModelError::Device(
                    "--device gpu: wgpu found no adapter (install a Vulkan/Metal/DX12 driver, \
                     or Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
                        .into(),
                ));
            };
            wgpu_device(kind_of(best.device_type))
        }
        DeviceChoice::Auto => {
            let found = adapters();
            match found.iter().find(|a| !is_software(a)) {
                Some(hw) => wgpu_device(kind_of(hw.device_type)),
                None => {
                    let reason = match found.first() {
                        Some(sw) => format!(
                            "no GPU adapter: only the software adapter {} (slower than the CPU backend); CPU fallback",
                            sw.name
                        ),
                        None => "no GPU adapter: CPU fallback".to_string(),
                    };
                    Ok(cpu(Some(reason)))
                }
            }
        }
    }
}

fn kind_of(t: wgpu::DeviceType) -> DeviceKind {
    match t {
        wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(0),
        wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(0),
        wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(0),
        wgpu::DeviceType::Cpu => DeviceKind::Cpu,
        wgpu::DeviceType::Other => DeviceKind::DefaultDevice,
    }
}
