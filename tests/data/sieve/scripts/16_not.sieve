require "imap4flags";
if not exists "message-id" { addflag "noid"; }
if not anyof (exists "date", false) { addflag "nodate"; }
