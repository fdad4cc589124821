require ["fileinto", "copy", "imap4flags", "variables", "envelope", "body"];
if header :matches "subject" "*" { set "s" "${1}"; }
if anyof (address :domain :is "from" "example.org", envelope :domain :is "to" "zzz.org") {
  addflag "\\Flagged";
  fileinto :copy "Archive";
}
if allof (not exists "list-id", body :text :contains "the") {
  redirect :copy "bob@example.test";
}
if header :contains "subject" "${s}" { addflag "selfmatch"; }
