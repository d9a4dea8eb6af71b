//! Tests of the passthrough device over the fake VFIO device: capability layouts the rig's
//! devices lack, BAR mapping, interrupts, and garbage from a hostile guest.

use std::sync::Arc;

use super::mock::{MockBuilder, MockDevice, MockMapper};
use super::{VfioPciDevice, VfioPciOptions};
use crate::interrupt::fake::FakeInterrupts;
use crate::pci::{BarAccess, PciDevice};

mod bars;
mod caps;
mod errors;
mod garbage;
mod irqs;
mod msix_reloc;
mod p2p;
mod platform;
mod reset;

/// A device under test with its fakes.
pub(super) struct Rig {
    pub mock: MockDevice,
    pub irq: FakeInterrupts,
    pub mapper: Arc<MockMapper>,
    pub dev: VfioPciDevice,
}

impl Rig {
    pub fn new(b: &mut MockBuilder) -> Self {
        Self::with_rom(b, None)
    }

    pub fn with_rom(b: &mut MockBuilder, rom: Option<Vec<u8>>) -> Self {
        Self::with_options(b, VfioPciOptions::default().rom(rom))
    }

    /// The device built with `options`; its mapper checks that every slot maps a device mmap.
    pub fn with_options(b: &mut MockBuilder, options: VfioPciOptions) -> Self {
        let mock = b.build();
        let irq = FakeInterrupts::new();
        let mapper = Arc::new(MockMapper::default().backed_by(&mock));
        let dev = VfioPciDevice::with_options(
            "0000:06:0d.0",
            Box::new(mock.clone()),
            &irq,
            mapper.clone(),
            options,
        )
        .unwrap();
        Rig {
            mock,
            irq,
            mapper,
            dev,
        }
    }

    pub fn r32(&mut self, off: u16) -> u32 {
        let mut b = [0; 4];
        self.dev.config_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn r16(&mut self, off: u16) -> u16 {
        let mut b = [0; 2];
        self.dev.config_read(off, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn r8(&mut self, off: u16) -> u8 {
        let mut b = [0; 1];
        self.dev.config_read(off, &mut b);
        b[0]
    }

    pub fn w32(&mut self, off: u16, v: u32) {
        self.dev.config_write(off, &v.to_le_bytes());
    }

    pub fn w16(&mut self, off: u16, v: u16) {
        self.dev.config_write(off, &v.to_le_bytes());
    }

    /// Sizes a BAR register the way firmware does; returns what reads back.
    pub fn size_bar(&mut self, off: u16) -> u32 {
        let orig = self.r32(off);
        self.w32(off, u32::MAX);
        let mask = self.r32(off);
        self.w32(off, orig);
        mask
    }

    pub fn bar_read(&mut self, bar: usize, off: u64, len: usize) -> Vec<u8> {
        let mut d = vec![0; len];
        self.dev.bar_read(bar, off, &mut d);
        d
    }

    /// Everything the fakes recorded that should never happen.
    pub fn violations(&self) -> Vec<String> {
        let mut v = self.mock.st().violations.clone();
        v.extend(self.mapper.st().violations.clone());
        v
    }
}

/// The byte the fake device holds at `offset` of BAR region `bar` (its fill pattern).
pub(super) fn pattern(bar: u32, offset: u64) -> u8 {
    (offset as u8) ^ (bar as u8 * 16)
}
