//! One list per stable enumeration, from which its enum, its decoder and its names are generated.
//!
//! The numbers are an ABI (kernel <-> daemon) and a file format (the audit log); the names are
//! what `log show`, `status` and docs/log-format.md print. Writing the three by hand let them
//! drift apart; generated from one list they cannot.

/// Declares a `#[repr($repr)]` enum with explicit stable numbers and names, and generates:
/// `ALL` (every value in declaration order), the decoder `$decode` (number -> value), `name`
/// (value -> stable name) and `from_name` (stable name -> value).
///
/// ```text
/// stable_enum! {
///     /// Docs.
///     pub enum Colour: u8, from_u8 {
///         /// Docs.
///         Red = 1 => "red",
///     }
/// }
/// ```
macro_rules! stable_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident, $decode:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $value:literal => $text:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant = $value,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [Self; [$($value),+].len()] = [$(Self::$variant),+];

            /// Decodes a number read from the kernel or the log; `None` for a number this
            /// version does not know (a newer writer's).
            pub const fn $decode(v: $repr) -> Option<Self> {
                match v {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The stable name, as the log, `status` and the docs spell it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The value a stable name stands for.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|v| v.name() == name)
            }
        }
    };
}
