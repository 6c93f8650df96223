//! The fields the engine knows, the raw [`Record`] a caller hands in, and the
//! column-name aliases used to read CSV headers. No normalisation here: see
//! `text` and `store`.

use serde::{Deserialize, Serialize};

/// A field the engine can compare. The order is the order of comparisons in a
/// [`crate::Model`] and in explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    GivenName,
    Surname,
    FullName,
    StreetNumber,
    Address1,
    Address2,
    Suburb,
    Postcode,
    State,
    DateOfBirth,
    Phone,
    Email,
    NationalId,
}

/// Number of [`Field`]s.
pub const FIELD_COUNT: usize = 13;

impl Field {
    /// Every field, in comparison order.
    pub const ALL: [Field; FIELD_COUNT] = [
        Field::GivenName,
        Field::Surname,
        Field::FullName,
        Field::StreetNumber,
        Field::Address1,
        Field::Address2,
        Field::Suburb,
        Field::Postcode,
        Field::State,
        Field::DateOfBirth,
        Field::Phone,
        Field::Email,
        Field::NationalId,
    ];

    /// Position in [`Field::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Canonical snake_case name (also the serde name).
    pub fn name(self) -> &'static str {
        self.aliases()[0]
    }

    /// Accepted CSV header names, canonical first (compared after lower-casing
    /// and turning spaces and dashes into underscores).
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Field::GivenName => &["given_name", "first_name", "firstname", "given", "forename"],
            Field::Surname => &["surname", "last_name", "lastname", "family_name"],
            Field::FullName => &["full_name", "name", "customer_name", "客户名称", "姓名"],
            Field::StreetNumber => &["street_number", "house_number"],
            Field::Address1 => &["address_1", "address1", "address", "street", "地址"],
            Field::Address2 => &["address_2", "address2"],
            Field::Suburb => &["suburb", "city", "town", "城市"],
            Field::Postcode => &["postcode", "zip", "zipcode", "postal_code", "邮编"],
            Field::State => &["state", "region", "province", "省份"],
            Field::DateOfBirth => &["date_of_birth", "dob", "birth_date", "birthday", "生日"],
            Field::Phone => &[
                "phone",
                "mobile",
                "phone_number",
                "telephone",
                "联系方式",
                "电话",
                "手机",
            ],
            Field::Email => &["email", "e_mail", "email_address", "邮箱"],
            Field::NationalId => &["national_id", "soc_sec_id", "ssn", "id_number", "身份证"],
        }
    }

    /// The field a CSV header names, if any.
    pub fn from_header(header: &str) -> Option<Field> {
        let h: String = header.trim().to_lowercase().replace([' ', '-'], "_");
        Field::ALL.into_iter().find(|f| f.aliases().contains(&h.as_str()))
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Raw values of one customer record; absent and empty are the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    values: [Option<String>; FIELD_COUNT],
}

impl Record {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `field` (builder style); blank values count as absent.
    pub fn with(mut self, field: Field, value: impl Into<String>) -> Self {
        self.set(field, value);
        self
    }

    /// Sets `field`; blank values count as absent.
    pub fn set(&mut self, field: Field, value: impl Into<String>) {
        let value = value.into();
        self.values[field.index()] = if value.trim().is_empty() { None } else { Some(value) };
    }

    /// The raw value of `field`.
    pub fn get(&self, field: Field) -> Option<&str> {
        self.values[field.index()].as_deref()
    }
}
